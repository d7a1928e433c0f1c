"""server/capture: sampled calls and true answers in the capture store; realized quality."""
