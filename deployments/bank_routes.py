"""``/v1/banks``: manage the hash banks (named lists of known images, each with an action).

The ingress writes to the database (``app.state.banks``, a ``banks.store.BankStore``); every
model replica reads the changes within ``known_images.poll_s``. Each database call runs on a
worker thread, never on the event loop. With API keys configured, only keys with
``admin: true`` may call these routes (403 ``forbidden`` otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from banks.schemas import (
    MAX_ENTRIES_PER_CALL, Added, Bank, BankCreate, BankList, BankUpdate, EntriesAdd, EntriesRemove,
    Entry, EntryPage, Removed,
)
from classifiers.errors import ModerationError
from deployments.responses import ERROR_RESPONSES

IMPORT_MEDIA = ("text/csv", "text/tab-separated-values", "text/plain")


def require_admin(request: Request) -> None:
    gatekeeper = request.app.state.gatekeeper
    if gatekeeper.enabled and not gatekeeper.is_admin(getattr(request.state, "api_key", None)):
        raise ModerationError("forbidden", "managing hash banks needs an API key with admin: true")


router = APIRouter(prefix="/v1/banks", tags=["banks"], dependencies=[Depends(require_admin)],
                   responses=ERROR_RESPONSES)


async def _store(request: Request, method: Callable[..., Any], *args, **kwargs) -> Any:
    """Run one store call on a worker thread; a database that cannot be reached is a 503."""
    from sqlalchemy.exc import OperationalError

    try:
        return await asyncio.to_thread(method, *args, **kwargs)
    except OperationalError as exc:
        raise ModerationError("banks_unavailable", f"the bank database cannot be reached: {exc.orig}") from None


def _bank(found) -> Bank:
    return Bank.model_validate(found, from_attributes=True)


def _entry(found) -> Entry:
    return Entry.model_validate(found, from_attributes=True)


@router.get("", response_model=BankList)
async def list_banks(request: Request) -> BankList:
    """Every bank with its action and number of entries."""
    store = request.app.state.banks
    return BankList(banks=[_bank(b) for b in await _store(request, store.list_banks)])


@router.post("", response_model=Bank, status_code=201)
async def create_bank(body: BankCreate, request: Request) -> Bank:
    """A new, empty bank (409 ``bank_exists`` if the name is taken)."""
    store = request.app.state.banks
    return _bank(await _store(request, store.create_bank, body.name, body.action, body.description))


@router.get("/{name}", response_model=Bank)
async def get_bank(name: str, request: Request) -> Bank:
    return _bank(await _store(request, request.app.state.banks.get_bank, name))


@router.patch("/{name}", response_model=Bank)
async def update_bank(name: str, body: BankUpdate, request: Request) -> Bank:
    """Change a bank's action or description (replicas apply it within `poll_s`)."""
    store = request.app.state.banks
    return _bank(await _store(request, store.update_bank, name, action=body.action, description=body.description))


@router.delete("/{name}", status_code=204)
async def delete_bank(name: str, request: Request) -> Response:
    """Delete a bank and every entry in it."""
    await _store(request, request.app.state.banks.delete_bank, name)
    return Response(status_code=204)


@router.post("/{name}/entries", response_model=Added)
async def add_entries(name: str, body: EntriesAdd, request: Request) -> Added:
    """Add up to 10,000 hashes at once: all or none (one bad entry refuses the call)."""
    from banks.store import NewEntry

    entries = [NewEntry(e.kind, e.hash, e.entry_id, e.note) for e in body.entries]
    result = await _store(request, request.app.state.banks.add_entries, name, entries)
    return Added(added=result.added, existing=result.existing)


@router.get("/{name}/entries", response_model=EntryPage)
async def list_entries(
    name: str, request: Request, after: int = Query(0, ge=0, description="List entries with `pk` above this."),
    limit: int = Query(1000, ge=1, le=MAX_ENTRIES_PER_CALL),
) -> EntryPage:
    """A page of entries in the order they were added."""
    store = request.app.state.banks
    await _store(request, store.get_bank, name)  # 404 for an unknown bank, not an empty page
    found = await _store(request, store.list_entries, name, after, limit)
    return EntryPage(entries=[_entry(e) for e in found],
                     next_after=found[-1].pk if len(found) == limit else None)


@router.post("/{name}/entries/remove", response_model=Removed)
async def remove_entries(name: str, body: EntriesRemove, request: Request) -> Removed:
    """Remove entries by `pk`, by your `entry_id`, or by hash."""
    removed = await _store(request, request.app.state.banks.remove_entries, name, pks=body.pks,
                           entry_ids=body.entry_ids, hashes=[(h.kind, h.hash) for h in body.hashes])
    return Removed(removed=removed)


@router.post("/{name}/import", response_model=Added, openapi_extra={"requestBody": {
    "required": True, "description": "A ThreatExchange-style CSV or TSV of hashes: a header naming the "
    "columns (`hash`, `kind`, `entry_id`, `note`; others ignored) or positional `hash[,entry_id[,note]]`.",
    "content": {media: {"schema": {"type": "string"}} for media in IMPORT_MEDIA}}})
async def import_entries(
    name: str, request: Request,
    kind: str = Query("pdq", pattern="^(pdq|sha256)$", description="Kind of rows that name none."),
) -> Added:
    """Add every hash of a CSV/TSV file (up to `max_import_bytes`), in one transaction."""
    from banks.formats import parse_hash_list

    media = request.headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    if media not in IMPORT_MEDIA:
        raise ModerationError("unsupported_media_type", f"send text/csv or text/tab-separated-values, not {media}")
    store = request.app.state.banks
    await _store(request, store.get_bank, name)  # an unknown bank fails before the body is read
    body = await request.body()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModerationError("invalid_request", "the hash list is not UTF-8 text") from None
    entries = await asyncio.to_thread(parse_hash_list, text, default_kind=kind)
    if not entries:
        raise ModerationError("invalid_request", "the hash list holds no hashes")
    result = await _store(request, store.add_entries, name, entries)
    return Added(added=result.added, existing=result.existing)


@router.get("/{name}/export", response_class=StreamingResponse, responses={200: {
    "content": {"text/tab-separated-values": {}, "text/csv": {}}, "description": "Every entry, header first."}})
async def export_entries(
    name: str, request: Request, format: str = Query("tsv", pattern="^(tsv|csv)$"),
) -> StreamingResponse:
    """The bank as a TSV (or CSV) file that `import` reads back."""
    from banks.formats import export_hash_list

    store = request.app.state.banks
    await _store(request, store.get_bank, name)
    delimiter, media = ("\t", "text/tab-separated-values") if format == "tsv" else (",", "text/csv")
    lines = export_hash_list(store.iter_entries(name), delimiter=delimiter)  # iterated on a worker thread
    return StreamingResponse(lines, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{name}.{format}"'})

