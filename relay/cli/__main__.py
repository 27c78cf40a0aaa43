"""`python -m relay.cli`: the same as the `outbox-relay` console script."""

from relay.cli.commands import main

main()
