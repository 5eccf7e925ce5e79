"""``/v1/banks``: manage the hash banks (named lists of known images, each with an action).

The ingress writes to the database (``app.state.banks``, a ``banks.store.BankStore``); every
model replica reads the changes within ``known_images.poll_s``. Each database call runs on a
worker thread, never on the event loop. With API keys configured, only keys with
``admin: true`` may call these routes (403 ``forbidden`` otherwise).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from banks.schemas import (
    MAX_ENTRIES_PER_CALL, MAX_PK, Added, Bank, BankCreate, BankList, BankUpdate, EntriesAdd, EntriesRemove,
    Entry, EntryPage, Removed,
)
from classifiers.errors import ModerationError
from deployments.responses import ERROR_RESPONSES

logger = logging.getLogger("ray.serve")

IMPORT_MEDIA = ("text/csv", "text/tab-separated-values", "text/plain")
EXPORT_PAGE = 10_000


def require_admin(request: Request) -> None:
    gatekeeper = request.app.state.gatekeeper
    if gatekeeper.enabled and not gatekeeper.is_admin(getattr(request.state, "api_key", None)):
        raise ModerationError("forbidden", "managing hash banks needs an API key with admin: true")


router = APIRouter(prefix="/v1/banks", tags=["banks"], dependencies=[Depends(require_admin)],
                   responses=ERROR_RESPONSES)


async def _opened(state) -> Any:
    """The ingress's ``BankStore``, opened on first use (``state.banks`` starts as a function
    that opens it): a bank database that is down when the ingress starts stops only these routes."""
    if callable(state.banks):
        async with state.banks_opening:
            if callable(state.banks):
                state.banks = await asyncio.to_thread(state.banks)
    return state.banks


async def _store(request: Request, method: str, *args, **kwargs) -> Any:
    """Run one store call on a worker thread. The database refusing a value is a 400; a
    database that cannot be reached (or has no free connection) is a 503; the details go to
    the log, not to the caller."""
    from sqlalchemy.exc import DataError, InterfaceError, OperationalError, TimeoutError as PoolTimeout

    try:
        store = await _opened(request.app.state)
        return await asyncio.to_thread(getattr(store, method), *args, **kwargs)
    except DataError as exc:
        logger.info("bank database refused a value: %s", exc.orig)
        raise ModerationError("invalid_request", "the database refused a value of this request") from None
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        logger.warning("bank database unavailable: %s", exc)
        raise ModerationError("banks_unavailable", "the bank database cannot be reached; retry shortly") from None


def _bank(found) -> Bank:
    return Bank.model_validate(found, from_attributes=True)


def _entry(found) -> Entry:
    return Entry.model_validate(found, from_attributes=True)


@router.get("", response_model=BankList)
async def list_banks(request: Request) -> BankList:
    """Every bank with its action and number of entries."""
    return BankList(banks=[_bank(b) for b in await _store(request, "list_banks")])


@router.post("", response_model=Bank, status_code=201)
async def create_bank(body: BankCreate, request: Request) -> Bank:
    """A new, empty bank (409 ``bank_exists`` if the name is taken)."""
    return _bank(await _store(request, "create_bank", body.name, body.action, body.description))


@router.get("/{name}", response_model=Bank)
async def get_bank(name: str, request: Request) -> Bank:
    return _bank(await _store(request, "get_bank", name))


@router.patch("/{name}", response_model=Bank)
async def update_bank(name: str, body: BankUpdate, request: Request) -> Bank:
    """Change a bank's action or description (replicas apply it within `poll_s`)."""
    return _bank(await _store(request, "update_bank", name, action=body.action, description=body.description))


@router.delete("/{name}", status_code=204)
async def delete_bank(name: str, request: Request) -> Response:
    """Delete a bank and every entry in it."""
    await _store(request, "delete_bank", name)
    return Response(status_code=204)


@router.post("/{name}/entries", response_model=Added)
async def add_entries(name: str, body: EntriesAdd, request: Request) -> Added:
    """Add up to 10,000 hashes at once: all or none (one bad entry refuses the call)."""
    from banks.store import NewEntry

    entries = [NewEntry(e.kind, e.hash, e.entry_id, e.note) for e in body.entries]
    result = await _store(request, "add_entries", name, entries)
    return Added(added=result.added, existing=result.existing)


@router.get("/{name}/entries", response_model=EntryPage)
async def list_entries(
    name: str, request: Request,
    after: int = Query(0, ge=0, le=MAX_PK, description="List entries with `pk` above this."),
    limit: int = Query(1000, ge=1, le=MAX_ENTRIES_PER_CALL),
) -> EntryPage:
    """A page of entries in the order they were added."""
    await _store(request, "get_bank", name)  # 404 for an unknown bank, not an empty page
    found = await _store(request, "list_entries", name, after, limit)
    return EntryPage(entries=[_entry(e) for e in found],
                     next_after=found[-1].pk if len(found) == limit else None)


@router.post("/{name}/entries/remove", response_model=Removed)
async def remove_entries(name: str, body: EntriesRemove, request: Request) -> Removed:
    """Remove entries by `pk`, by your `entry_id`, or by hash."""
    removed = await _store(request, "remove_entries", name, pks=body.pks,
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
    media = request.headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    if media not in IMPORT_MEDIA:
        raise ModerationError("unsupported_media_type", f"send text/csv or text/tab-separated-values, not {media}")
    await _store(request, "get_bank", name)  # an unknown bank fails before the body is read
    body = await request.body()
    entries = await asyncio.to_thread(_parse_import, body, kind)  # large files: off the event loop
    result = await _store(request, "add_entries", name, entries)
    return Added(added=result.added, existing=result.existing)


def _parse_import(body: bytes, kind: str) -> list:
    from banks.formats import parse_hash_list

    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModerationError("invalid_request", "the hash list is not UTF-8 text") from None
    entries = parse_hash_list(text, default_kind=kind)
    if not entries:
        raise ModerationError("invalid_request", "the hash list holds no hashes")
    return entries


@router.get("/{name}/export", response_class=StreamingResponse, responses={200: {
    "content": {"text/tab-separated-values": {}, "text/csv": {}}, "description": "Every entry, header first."}})
async def export_entries(
    name: str, request: Request, format: str = Query("tsv", pattern="^(tsv|csv)$"),
) -> StreamingResponse:
    """The bank as a TSV (or CSV) file that `import` reads back."""
    from banks.formats import export_hash_list

    await _store(request, "get_bank", name)
    first = await _store(request, "list_entries", name, 0, EXPORT_PAGE)  # a database error is still a 503 here
    delimiter, media = ("\t", "text/tab-separated-values") if format == "tsv" else (",", "text/csv")
    store = await _opened(request.app.state)

    def entries():  # iterated on a worker thread by Starlette
        page = first
        while page:
            yield from page
            page = store.list_entries(name, page[-1].pk, EXPORT_PAGE) if len(page) == EXPORT_PAGE else []

    return StreamingResponse(export_hash_list(entries(), delimiter=delimiter), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{name}.{format}"'})
