"""``client.banks``: manage a service's hash banks over HTTP (``/v1/banks``; an admin key)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from banks.schemas import Added, Bank, BankList, Entry, EntryPage, Removed
from clients.core import api_error

Send = Callable[..., httpx.Response]


class Banks:
    """The bank routes, on the client's connection (``ModerationClient(...).banks``)."""

    def __init__(self, send: Send, http: httpx.Client) -> None:
        self._send, self._http = send, http

    def _json(self, method: str, path: str, expect: int = 200, **kwargs) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code != expect:
            raise api_error(response.status_code, response.content, response.headers)
        return response.content

    def list(self) -> list[Bank]:
        return BankList.model_validate_json(self._json("GET", "/v1/banks")).banks

    def get(self, name: str) -> Bank:
        return Bank.model_validate_json(self._json("GET", f"/v1/banks/{quote(name, safe='')}"))

    def create(self, name: str, action: str, description: str = "") -> Bank:
        body = {"name": name, "action": action, "description": description}
        return Bank.model_validate_json(self._json("POST", "/v1/banks", 201, json=body))

    def update(self, name: str, action: str | None = None, description: str | None = None) -> Bank:
        body = {k: v for k, v in (("action", action), ("description", description)) if v is not None}
        return Bank.model_validate_json(self._json("PATCH", f"/v1/banks/{quote(name, safe='')}", json=body))

    def delete(self, name: str) -> None:
        self._json("DELETE", f"/v1/banks/{quote(name, safe='')}", 204)

    def add(self, name: str, entries: Iterable[dict]) -> Added:
        """Add ``[{"hash", "kind" ("pdq" default or "sha256"), "entry_id"?, "note"?}]`` (up to 10,000)."""
        return Added.model_validate_json(self._json("POST", f"/v1/banks/{quote(name, safe='')}/entries",
                                                    json={"entries": list(entries)}))

    def entries(self, name: str, after: int = 0, limit: int = 1000) -> EntryPage:
        return EntryPage.model_validate_json(self._json("GET", f"/v1/banks/{quote(name, safe='')}/entries",
                                                        params={"after": after, "limit": limit}))

    def iter_entries(self, name: str, page: int = 1000) -> Iterator[Entry]:
        after: int | None = 0
        while after is not None:
            found = self.entries(name, after, page)
            yield from found.entries
            after = found.next_after

    def remove(self, name: str, pks: Iterable[int] = (), entry_ids: Iterable[str] = (),
               hashes: Iterable[tuple[str, str]] = ()) -> int:
        body = {"pks": list(pks), "entry_ids": list(entry_ids),
                "hashes": [{"kind": kind, "hash": value} for kind, value in hashes]}
        return Removed.model_validate_json(self._json("POST", f"/v1/banks/{quote(name, safe='')}/entries/remove", json=body)).removed

    def import_text(self, name: str, text: str | bytes, kind: str = "pdq", tsv: bool | None = None) -> Added:
        """Import a ThreatExchange-style CSV/TSV of hashes (one transaction)."""
        data = text.encode() if isinstance(text, str) else text
        tsv = b"\t" in data.split(b"\n", 1)[0] if tsv is None else tsv
        media = "text/tab-separated-values" if tsv else "text/csv"
        return Added.model_validate_json(self._json("POST", f"/v1/banks/{quote(name, safe='')}/import", params={"kind": kind},
                                                    content=data, headers={"Content-Type": media}))

    def export(self, name: str, format: str = "tsv") -> Iterator[str]:
        """The bank as TSV/CSV lines (header first), streamed."""
        with self._http.stream("GET", f"/v1/banks/{quote(name, safe='')}/export", params={"format": format}) as response:
            if response.status_code != 200:
                response.read()
                raise api_error(response.status_code, response.content, response.headers)
            yield from response.iter_lines()
