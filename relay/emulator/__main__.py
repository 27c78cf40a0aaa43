"""`python -m relay.emulator`: same as `outbox-relay emulator`."""

from relay.emulator.command import emulator

if __name__ == "__main__":
    emulator(prog_name="python -m relay.emulator")
