"""The hash-bank API's request and response models (``/v1/banks``; importable without a database)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

BANK_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
HEX64 = r"^[0-9a-fA-F]{64}$"
MAX_ENTRIES_PER_CALL = 10_000
MAX_PK = 2**63 - 1
MAX_TEXT = 4096  # descriptions and notes (the store's limit)
Pk = Annotated[int, Field(ge=0, le=MAX_PK)]
EntryId = Annotated[str, Field(min_length=1, max_length=256)]
Action = Literal["block", "review", "allow"]
Kind = Literal["pdq", "sha256"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BankCreate(_Body):
    name: str = Field(pattern=BANK_NAME, examples=["removed-before"])
    action: Action = Field(description="What a match does: `block` flags the image whatever its scores, "
                           "`review` marks it for a person, `allow` clears it.")
    description: str = Field("", max_length=MAX_TEXT)


class BankUpdate(_Body):
    action: Action | None = None
    description: str | None = Field(None, max_length=MAX_TEXT)


class Bank(BaseModel):
    name: str
    action: Action
    description: str
    entries: int
    created_at: str


class BankList(BaseModel):
    banks: list[Bank]


class EntryIn(_Body):
    kind: Kind = "pdq"
    hash: str = Field(pattern=HEX64, description="64 hex digits: a PDQ hash (256 bits) or a SHA-256.")
    entry_id: str | None = Field(None, max_length=256, description="Your id for it (e.g. a case number).")
    note: str | None = Field(None, max_length=MAX_TEXT)


class EntriesAdd(_Body):
    entries: list[EntryIn] = Field(min_length=1, max_length=MAX_ENTRIES_PER_CALL)


class Added(BaseModel):
    added: int = Field(description="New entries written.")
    existing: int = Field(description="Entries the bank already held (same kind and hash): left as they were.")


class Entry(BaseModel):
    pk: int = Field(description="The entry's number in the database (unique across banks, ascending as added).")
    kind: Kind
    hash: str
    entry_id: str | None = None
    note: str | None = None
    created_at: str


class EntryPage(BaseModel):
    entries: list[Entry]
    next_after: int | None = Field(description="Pass as `after` for the next page; none at the end.")


class HashKey(_Body):
    kind: Kind = "pdq"
    hash: str = Field(pattern=HEX64)


class EntriesRemove(_Body):
    pks: list[Pk] = Field(default_factory=list, max_length=MAX_ENTRIES_PER_CALL)
    entry_ids: list[EntryId] = Field(default_factory=list, max_length=MAX_ENTRIES_PER_CALL)
    hashes: list[HashKey] = Field(default_factory=list, max_length=MAX_ENTRIES_PER_CALL)


class Removed(BaseModel):
    removed: int
