"""A small client for the HTTP API in tests: the base URL of a test broker and its guest."""

import time

import requests

GUEST = ("guest", "guest")


class Api:
    def __init__(self, broker, auth=GUEST):
        self.base = broker.http_url
        self.auth = auth
        self.session = requests.Session()

    def request(self, method, path, auth="default", **kwargs):
        kwargs.setdefault("timeout", 30)
        return self.session.request(
            method, self.base + path, auth=self.auth if auth == "default" else auth, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, json=None, **kwargs):
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path, json=None, **kwargs):
        return self.request("PUT", path, json=json, **kwargs)

    def delete(self, path, **kwargs):
        return self.request("DELETE", path, **kwargs)

    def ok(self, method, path, status=200, **kwargs):
        """The JSON of a request that must answer `status`."""
        response = self.request(method, path, **kwargs)
        assert response.status_code == status, (
            f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None


def assert_error(response, status, kind=None, reason_contains=None):
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body = response.json()
    assert set(body) == {"error", "reason"}, body
    if kind:
        assert body["error"] == kind, body
    if reason_contains:
        assert reason_contains in body["reason"], body
    return body


def wait_for(predicate, timeout=20, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value {last!r}")
