"""Everything that talks to Stripe or decides on its answers: the transport and the calls, the
classification table, the retry policy, the auth gate, the rate limit and its share between
replicas, webhooks, reconcile and drift."""
