"""The consumer side: upstream listeners, the instance tables fed by the registry, the balancer
and the retry budget. Never imports the provider side."""
