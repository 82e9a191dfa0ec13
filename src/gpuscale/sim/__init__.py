"""The simulator: workload, serving data plane, cluster and pod lifecycle, telemetry, results."""
