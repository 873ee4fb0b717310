"""The retention managers' web console (`churnlight console`)."""
