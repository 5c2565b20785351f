"""A network front for the BigQuery emulator that injects the faults of a real network and
answers as BigQuery does where the emulator cannot: a named fake in front of a real engine.

Every request is forwarded to the emulator unchanged, except the job inserts a fault was set
for:

* ``lose_insert_answer(job_id_part)``: the first insert of a matching job reaches the emulator
  (the job is created and runs), but its answer is lost (503). The client retries the insert,
  and the front answers that retry as BigQuery does for a job id that exists, 409 Already
  Exists (https://cloud.google.com/bigquery/docs/running-jobs; the emulator would accept the
  duplicate).
* ``fail_polls_while_running(job_id_part)``: the first insert of a matching job is held: the
  front answers it as BigQuery answers an insert of a job that is still running (the job
  resource, state RUNNING) and fails the next status poll of that job with 404 notFound, a
  read error the client does not retry (BigQuery can answer it for a job just inserted:
  googleapis/python-bigquery issue 2134). The held insert reaches the emulator (and the job
  "finishes") only when the job is asked for again, or when another job is inserted: that one
  first, so a publish that did not wait for the job copies what the job has not written yet.

``events`` records what happened, in order.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_JOB_PATH = re.compile(r"/bigquery/v2/projects/[^/]+/jobs/([^/?]+)")
_INSERT_PATH = re.compile(r"/bigquery/v2/projects/[^/]+/jobs(\?|$)")


def _error(code: int, status: str, reason: str, message: str) -> bytes:
    return json.dumps(
        {"error": {"code": code, "message": message, "status": status,
                   "errors": [{"message": message, "domain": "global", "reason": reason}]}}
    ).encode()  # fmt: skip


class BigQueryFront(ThreadingHTTPServer):
    def __init__(self, emulator_endpoint: str) -> None:
        target = urlparse(emulator_endpoint)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.lock = threading.Lock()
        self.events: list[str] = []
        self._lose: str | None = None
        self._hold: str | None = None
        self._inserted: set[str] = set()
        self._held: tuple[str, str, dict, bytes] | None = None  # job id, path, headers, body
        self._poll_failed = False
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def lose_insert_answer(self, job_id_part: str) -> None:
        self._lose = job_id_part

    def fail_polls_while_running(self, job_id_part: str) -> None:
        self._hold = job_id_part

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def forward(
        self, method: str, path: str, headers: dict, body: bytes
    ) -> tuple[int, dict, bytes]:
        connection = http.client.HTTPConnection(*self.target, timeout=600)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def release_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            job_id, path, headers, body = held
            self.events.append(f"held insert of {job_id} reaches the emulator")
            self.forward("POST", path, headers, body)

    def handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        with self.lock:
            job_path = _JOB_PATH.match(path)
            if method == "GET" and job_path and self._held and job_path.group(1) == self._held[0]:
                if not self._poll_failed:
                    self._poll_failed = True
                    self.events.append(f"poll of running job {job_path.group(1)} fails (404)")
                    message = f"Not found: Job {job_path.group(1)}"
                    return 404, {}, _error(404, "NOT_FOUND", "notFound", message)
                self.release_held()
            if method == "POST" and _INSERT_PATH.match(path):
                return self._insert(path, headers, body)
        return self.forward(method, path, headers, body)

    def _insert(self, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        job = json.loads(body or b"{}")
        job_id = job.get("jobReference", {}).get("jobId", "")
        if self._lose and self._lose in job_id and "_publish" not in job_id:
            if job_id in self._inserted:
                self.events.append(f"retried insert of {job_id} answered 409")
                project = job["jobReference"].get("projectId", "")
                message = f"Already Exists: Job {project}:US.{job_id}"
                return 409, {}, _error(409, "ALREADY_EXISTS", "duplicate", message)
            self._inserted.add(job_id)
            self.forward("POST", path, headers, body)
            self.events.append(f"insert of {job_id} reaches the emulator; its answer is lost (503)")
            return 503, {}, _error(503, "UNAVAILABLE", "backendError", "Service unavailable")
        if self._hold and self._hold in job_id and "_publish" not in job_id and not self._inserted:
            self._inserted.add(job_id)
            self._held = (job_id, path, headers, body)
            self.events.append(f"insert of {job_id} held: answered RUNNING")
            running = {**job, "id": job_id, "status": {"state": "RUNNING"}}
            return 200, {"Content-Type": "application/json"}, json.dumps(running).encode()
        if self._held is not None:  # another job: it goes first, then the held one
            self.events.append(f"insert of {job_id} while {self._held[0]} is held")
            answer = self.forward("POST", path, headers, body)
            self.release_held()
            return answer
        return self.forward("POST", path, headers, body)


class _FrontHandler(BaseHTTPRequestHandler):
    server: BigQueryFront
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.handle(method, self.path, dict(self.headers), body)
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        if not any(k.lower() == "content-type" for k in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, *args) -> None:
        pass
