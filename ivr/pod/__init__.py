"""A pod: N robot workers on one machine behind HAProxy on the FastAGI port (``ivr serve --workers N``,
``ivr pod config|up|down|status``). See README "Running a bigger hotline"."""
