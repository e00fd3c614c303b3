"""Who is calling: the authenticated API key, its environment and role.

Every repository query is scoped by `environment_id`; transports put the principal
into `current_principal` once the key is verified."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "client", "read"]
Mode = Literal["test", "live"]

# admin ⊇ client ⊇ read
_RANK = {"read": 0, "client": 1, "admin": 2}


def role_allows(have: str, need: str) -> bool:
    return _RANK[have] >= _RANK[need]


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    environment_id: str
    mode: Mode
    role: Role
    key_id: str

    def allows(self, need: Role) -> bool:
        return role_allows(self.role, need)


current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)
