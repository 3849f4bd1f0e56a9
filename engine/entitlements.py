"""Who may send what: roles from the config, checked at stage 1 for every live state command.

=====================  =========================================================================
command                who may send it
=====================  =========================================================================
orders                 a PM or trader for an account in their list (an admin may cancel any)
officer actions        a compliance officer (approve/reject holds, alerts, issuer lists, locates)
risk controls          an admin (the kill switch: an admin or a compliance officer)
prices, day, snapshot, busts and corrections
                       an admin (the live feed and venues arrive with the gateways)
=====================  =========================================================================

With no users configured (the engine run alone, as in its own tests) nothing is checked.
Replay does not re-check: the journal holds only what was entitled when it arrived.
"""

from __future__ import annotations

from engine.constants import RejectCode
from engine.messages import (
    ALERT_COMMANDS,
    AdvanceTime,
    ApproveOrder,
    BustTrade,
    CancelOrder,
    CorrectTrade,
    EndOfDay,
    MassCancel,
    ModifyOrder,
    PriceTick,
    RejectHeldOrder,
    SetKillSwitch,
    SetLocate,
    SetRiskLimit,
    SetTradingState,
    SubmitBlockOrder,
    SubmitOrder,
    TakeSnapshot,
    UpdateIssuerList,
)
from engine.model import SYSTEM_USER, ReferenceData

Refusal = tuple[int, str]

_ORDER_ROLES = frozenset({"pm", "trader"})
_OFFICER = frozenset({"compliance"})
_ADMIN = frozenset({"admin"})
_ROLES_BY_KIND: dict[type, frozenset[str]] = {
    ApproveOrder: _OFFICER,
    RejectHeldOrder: _OFFICER,
    UpdateIssuerList: _OFFICER,
    SetLocate: _OFFICER,
    **{kind: _OFFICER for kind in ALERT_COMMANDS},
    SetRiskLimit: _ADMIN,
    SetTradingState: _ADMIN,
    SetKillSwitch: frozenset({"admin", "compliance"}),
    PriceTick: _ADMIN,
    BustTrade: _ADMIN,
    CorrectTrade: _ADMIN,
    EndOfDay: _ADMIN,
    TakeSnapshot: _ADMIN,
}


def entitlement_refusal(ref: ReferenceData, cmd) -> Refusal | None:
    """None if ``cmd.user`` may send ``cmd``, else (code, text). O(1)."""
    users = ref.users
    if not users:
        return None
    kind = type(cmd)
    if kind is AdvanceTime:
        return None  # made by the service's own timer, never decoded from a client
    name = cmd.user
    if name == SYSTEM_USER:
        return None  # the service's own inputs (feeds, venues); it refuses clients that claim it
    user = users.get(name)  # SYSTEM_USER is never in it
    if user is None:
        what = "no user given" if not name else f"unknown user {name!r}"
        return RejectCode.UNKNOWN_USER, f"{what}: every command names a user from the config"
    roles = user.roles
    if kind is SubmitBlockOrder:  # the block account and every account it allocates to
        for account in (cmd.account, *(t.account for t in cmd.targets)):
            if not _ORDER_ROLES.intersection(roles) or account not in user.accounts:
                return RejectCode.NOT_ENTITLED, f"user {name!r} may not act on account {account!r}"
        return None
    if kind in (SubmitOrder, ModifyOrder, CancelOrder, MassCancel):
        if kind in (CancelOrder, MassCancel) and "admin" in roles:
            return None
        if not _ORDER_ROLES.intersection(roles):
            return RejectCode.NOT_ENTITLED, f"user {name!r} ({', '.join(roles)}) may not enter orders"
        if kind is MassCancel and not cmd.account:
            return RejectCode.NOT_ENTITLED, f"user {name!r} must name one of their accounts"
        if cmd.account not in user.accounts:
            return RejectCode.NOT_ENTITLED, f"user {name!r} may not act on account {cmd.account!r}"
        return None
    need = _ROLES_BY_KIND.get(kind)
    if need is not None and not need.intersection(roles):
        return RejectCode.NOT_ENTITLED, (
            f"user {name!r} ({', '.join(roles)}) may not send {kind.__name__}: it needs the "
            f"{' or '.join(sorted(need))} role"
        )
    return None
