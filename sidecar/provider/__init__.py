"""The provider side: the inbound proxy's policy in front of the app, the requests in flight and
the consumers that sent them, the phase machine with its online and offline sequences, and the
offline notifications it sends. Never imports the consumer side."""
