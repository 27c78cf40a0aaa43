"""The send pipeline: producer (walk + claim, with its capacity) -> executor (Stripe calls, on
the call pool or the v2 streams) -> completer (outcomes), under one supervisor, woken by the
wakeup; maintenance runs the small periodic duties beside it."""
