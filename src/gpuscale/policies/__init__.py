"""Pure autoscaling policies and the ports they run through."""
