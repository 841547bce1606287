#!/usr/bin/env python3
"""One "pod"'s application for examples/mesh: answers GET with its name, and, given CALL_URL,
first calls the next service through its sidecar (not for /healthz, the readiness check) (the connection to the service's cluster IP
is redirected by iptables) and includes what it got. With FAIL_FILE present it answers 500.
A failed call downstream is reported, with the sidecar's x-tripline-reason, not passed on:
this hop contains the failure."""
import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ["NAME"]
CALL_URL = os.environ.get("CALL_URL")
CALL_HOST = os.environ.get("CALL_HOST")
FAIL_FILE = os.environ.get("FAIL_FILE")
# Straight to the destination: the sidecar intercepts it, no HTTP proxy in between.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class App(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"service": NAME})
        if FAIL_FILE and os.path.exists(FAIL_FILE):
            return self.reply(500, {"service": NAME, "error": "failing on purpose"})
        body = {"service": NAME}
        if CALL_URL:
            request = urllib.request.Request(CALL_URL, headers={"Host": CALL_HOST})
            try:
                with OPENER.open(request, timeout=5) as r:
                    body["downstream"] = json.load(r)
            except urllib.error.HTTPError as e:
                body["downstream"] = {"status": e.code, "reason": e.headers.get("x-tripline-reason")}
            except OSError as e:
                body["downstream"] = {"error": str(e)}
        self.reply(200, body)

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), App).serve_forever()
