"""Billing meters per account, as Stripe keeps them: each account (the platform and every
connected account) has its own meters; meters are deactivated and reactivated, never edited.

The configured meters are the meters every account starts with (so a test that configures
`api_calls` bills it on connected accounts too); meters added or changed at run time for one
account touch only that account, and without an account they touch every account.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from relay.emulator.config import Meter


@dataclass
class AccountMeters:
    """One account's meters in creation order (Stripe lists newest first)."""

    by_id: dict[str, Meter] = field(default_factory=dict)

    def add(self, meter: Meter, replace: bool) -> None:
        """`replace`: drop the account's other meters of this event name (Stripe allows one
        meter per event name; `replace=False` is for bad-input tests of answers that break
        that rule)."""
        if replace:
            for other in [m for m in self.by_id.values() if m.event_name == meter.event_name]:
                del self.by_id[other.meter_id]
        self.by_id.pop(meter.meter_id, None)
        self.by_id[meter.meter_id] = meter

    def for_event(self, event_name: str) -> Meter | None:
        """The meter events of this name count on: an active one, else an inactive one
        (whose events Stripe drops as `archived_meter`), else none (`no_meter`)."""
        found = [m for m in self.by_id.values() if m.event_name == event_name]
        active = [m for m in found if m.active]
        chosen = active or found
        return chosen[0] if chosen else None


class MeterBook:
    """Every account's meters; `template` is what an account starts with."""

    def __init__(self, template: tuple[Meter, ...]) -> None:
        self._template = AccountMeters()
        for meter in template:
            self._template.add(meter, replace=True)
        self._accounts: dict[str, AccountMeters] = {}

    def account(self, account: str) -> AccountMeters:
        found = self._accounts.get(account)
        if found is None:
            found = AccountMeters(dict(self._template.by_id))
            self._accounts[account] = found
        return found

    def _targets(self, account: str | None) -> list[AccountMeters]:
        if account is not None:
            return [self.account(account)]
        return [self._template, *self._accounts.values()]

    def add(self, meter: Meter, account: str | None = None, replace: bool = True) -> None:
        for target in self._targets(account):
            target.add(meter, replace)

    def set_active(self, meter_id: str, active: bool, account: str | None = None) -> bool:
        """Deactivate or reactivate a meter; False when no such meter exists there."""
        changed = False
        for target in self._targets(account):
            meter = target.by_id.get(meter_id)
            if meter is not None:
                target.by_id[meter_id] = dataclasses.replace(meter, active=active)
                changed = True
        return changed

    def remove(self, meter_id: str, account: str | None = None) -> None:
        """Emulator only (Stripe never deletes a meter): forget a meter."""
        for target in self._targets(account):
            target.by_id.pop(meter_id, None)
