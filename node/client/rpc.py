"""A small synchronous JSON-RPC client for the CLI and tools, with the node's binary routes
for a job's operands and result (no hex, no JSON around megabytes)."""

from __future__ import annotations

import contextlib
import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

from node.datadir import read_cookie

_ids = itertools.count(1)


class RpcCallError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def node_info(datadir: Path) -> dict[str, Any]:
    path = datadir / "node.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no running node found in {datadir} (no node.json)") from None
    return info


class RpcClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    @classmethod
    def for_datadir(cls, datadir: Path, rpc: str | None = None) -> RpcClient:
        address = rpc or node_info(datadir)["rpc"]
        try:
            token: str | None = read_cookie(datadir)
        except ValueError:
            token = None
        return cls(f"http://{address}/rpc", token)

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": list(params)}
        ).encode()
        req = urllib.request.Request(self.url, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        reply = json.loads(self._send(req, self.timeout))
        if "error" in reply:
            raise RpcCallError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def transaction(self, txid: str) -> dict[str, Any] | None:
        """``gettransaction``: our node's record of ``txid`` (its block height, none while
        in the mempool), or None when the node knows it nowhere. For a transaction the
        node admitted, None means it was dropped: a reorg undid what it relies on (or
        an earlier transaction of its sender was dropped), or it expired."""
        try:
            info: dict[str, Any] = self.call("gettransaction", txid)
        except RpcCallError as e:
            if "unknown transaction" not in str(e):
                raise
            return None
        return info

    def call_many(self, method: str, params: list[list[Any]]) -> list[Any]:
        """``method`` once for each of ``params`` in one JSON-RPC batch (at most 1,000):
        each call's result, or the RpcCallError the node answered it with, in order."""
        if not params:
            return []
        ids = [next(_ids) for _ in params]
        batch = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": p}
            for i, p in zip(ids, params, strict=True)
        ]
        req = urllib.request.Request(self.url, data=json.dumps(batch).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        replies = {r.get("id"): r for r in json.loads(self._send(req, self.timeout))}
        out: list[Any] = []
        for i in ids:
            reply = replies.get(i) or {"error": {"code": -32003, "message": "no reply"}}
            if "error" in reply:
                out.append(RpcCallError(reply["error"]["code"], reply["error"]["message"]))
            else:
                out.append(reply["result"])
        return out

    def put_operand(self, blob: bytes, layout: str = "rows") -> bytes:
        """Upload an encoded matrix (``encode_matrix``) as it is, ``POST /operand``: the
        node keeps it for the miners. Its root: root_a for ``rows``, root_b for ``cols``."""
        url = urljoin(self.url, "operand?" + urlencode({"layout": layout}))
        req = urllib.request.Request(url, data=blob, method="POST")
        req.add_header("Content-Type", "application/octet-stream")
        return bytes.fromhex(json.loads(self._send(req, self.timeout))["root"])

    def get_result(self, job_id: bytes, timeout: float = 60.0) -> bytes:
        """A claimed job's C as an encoded int32 matrix, ``GET /result/<job_id>``; the node
        waits up to ``timeout`` seconds to fetch it from its peers."""
        query = urlencode({"timeout": f"{timeout:g}"})
        req = urllib.request.Request(urljoin(self.url, f"result/{job_id.hex()}?{query}"))
        return self._send(req, self.timeout + timeout)

    def _send(self, req: urllib.request.Request, timeout: float) -> bytes:
        """The reply body; RpcCallError with the node's reason when it refused the request."""
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as e:  # refused before any method ran: say why
            reason = e.read(300).decode(errors="replace").strip()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                reason = json.loads(reason)["error"]["message"]
            raise RpcCallError(e.code, f"HTTP {e.code}: {reason or e.reason}") from None
        except urllib.error.URLError as e:
            raise OSError(f"cannot reach the node's RPC at {req.full_url}: {e.reason}") from None
