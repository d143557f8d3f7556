"""OpenTelemetry tracing with the parts users have: receivers that speak OTLP
(gRPC, and HTTP/protobuf) built from the OpenTelemetry project's own protos
(`opentelemetry-proto`, served with grpcio), and the OpenTelemetry Python SDK
as the client that starts a trace and calls over HTTP and gRPC (tritonclient)
with its context. The server's spans must arrive, nest under the client's
span, carry the model, version and batch, and link the requests of a batch;
a shadow copy's span links to its primary; with the receiver down, serving
goes on and the drops are counted."""

import concurrent.futures
import contextlib
import http.server
import re
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ROOT
from opentelemetry import propagate
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

SERVER, INTERNAL = 2, 1  # Span.SpanKind
# One row of V2 JSON, for calls whose headers the tests read.
BODY = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":[' + b",".join([b"0"] * 16) + b"]}]}"
# Spans go out every 100 ms, not the default 5 s: the tests wait less.
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def attrs(kvs):
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


class Spans:
    """What a receiver was sent: (resource attributes, span) pairs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got = []
        self.calls = 0

    def take(self, request):
        with self.lock:
            self.calls += 1
            for rs in request.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    self.got.extend((res, s) for s in ss.spans)

    def all(self):
        with self.lock:
            return list(self.got)

    def all_spans(self):
        return [s for _, s in self.all()]

    def wait(self, pred, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [s for _, s in self.all() if pred(s)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such span among {len(self.all())}")


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = Spans()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):
        self.spans.take(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self):
        self.server.stop(0)


class HttpReceiver:
    """OTLP/HTTP with protobuf bodies: POST /v1/traces."""

    def __init__(self):
        spans = self.spans = Spans()
        self.paths = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                paths.append((self.path, self.headers["Content-Type"]))
                spans.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def repo(tmp_path):
    """models/mlp (versions 1 and 2) with a batching delay, so that requests
    sent together share a run."""
    shutil.copytree(ROOT / "models" / "mlp", tmp_path / "mlp")
    (tmp_path / "mlp" / "config.toml").write_text(
        "[version_policy]\nall = true\n[batching]\nmax_queue_delay_microseconds = 50000\n"
    )
    return tmp_path


def rows(n=1):
    return np.arange(16 * n, dtype=np.float32).reshape(n, 16) / 16


def http_infer(server, headers, n=1):
    client = httpclient.InferenceServerClient(server.http)
    x = httpclient.InferInput("input", [n, 16], "FP32")
    x.set_data_from_numpy(rows(n))
    return client.infer("mlp", [x], headers=headers)


def grpc_infer(server, headers):
    client = grpcclient.InferenceServerClient(server.grpc)
    x = grpcclient.InferInput("input", [1, 16], "FP32")
    x.set_data_from_numpy(rows())
    return client.infer("mlp", [x], headers=headers)


tracer = TracerProvider().get_tracer("switchyard-tests")


def traced(call):
    """Runs `call(headers)` in a client span; returns the span's context."""
    with tracer.start_as_current_span("client") as span:
        headers = {}
        propagate.inject(headers)
        call(headers)
        return span.get_span_context()


def ids(ctx):
    return ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big")


def children(spans, parent):
    return {s.name: s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id}


@contextlib.contextmanager
def serving(switchyard, repo, monkeypatch, receiver, *flags, env=FAST):
    """A server exporting to `receiver`, which is stopped afterwards."""
    # The resource is the server's own: no name from the test's environment.
    for k in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield switchyard("--otlp-endpoint", receiver.url, *flags, models=repo)
    finally:
        receiver.stop()


def test_spans_nest_under_the_callers_over_http_and_grpc(switchyard, repo, monkeypatch):
    receiver = GrpcReceiver()
    with serving(switchyard, repo, monkeypatch, receiver) as server:
        for call, name, kind_attr in [
            (lambda h: http_infer(server, h), "POST /v2/models/{model}/infer", ("http.route", "/v2/models/{model}/infer")),
            (lambda h: grpc_infer(server, h), "inference.GRPCInferenceService/ModelInfer", ("rpc.system", "grpc")),
        ]:
            trace_id, client_span = ids(traced(call))
            [top] = receiver.spans.wait(lambda s: s.trace_id == trace_id and s.parent_span_id == client_span)
            assert top.kind == SERVER and top.name == name, top
            a = attrs(top.attributes)
            assert a[kind_attr[0]] == kind_attr[1], a
            assert a["switchyard.model"] == "mlp" and a["switchyard.version"] in (1, 2), a
            # The stages arrive with (or after) the server span; compute within the batch.
            want = {"switchyard.decode", "switchyard.route", "switchyard.queue", "switchyard.batch", "switchyard.encode"}
            deadline = time.time() + 10
            while time.time() < deadline:
                stages = children(receiver.spans.all_spans(), top)
                if want <= set(stages) and children(receiver.spans.all_spans(), stages["switchyard.batch"]):
                    break
                time.sleep(0.05)
            assert want <= set(stages), sorted(stages)
            # Each stage lies within the call's span (the clocks' readings may
            # differ by a microsecond).
            for s in stages.values():
                assert top.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano <= top.end_time_unix_nano + 1_000, s.name
            route = attrs(stages["switchyard.route"].attributes)
            assert route["switchyard.model"] == "mlp" and route["switchyard.routing"] == "default", route
            batch = attrs(stages["switchyard.batch"].attributes)
            assert batch["switchyard.batch.size"] >= 1 and batch["switchyard.batch.rows"] >= 1, batch
            assert "switchyard.compute" in children(receiver.spans.all_spans(), stages["switchyard.batch"])
        res = [r for r, _ in receiver.spans.all()]
        assert res[0]["service.name"] == "switchyard", res[0]
        # The answer names the server span; a caller that traces nothing starts a trace here.
        with urllib.request.urlopen(urllib.request.Request(f"http://{server.http}/v2/models/mlp/infer", data=BODY)) as r:
            parent = r.headers["traceparent"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", parent), parent
        span_id = bytes.fromhex(parent[36:52])
        [root] = receiver.spans.wait(lambda s: s.span_id == span_id)
        assert root.parent_span_id == b"" and root.kind == SERVER


def test_a_batch_links_the_requests_batched_together(switchyard, repo, monkeypatch):
    receiver = HttpReceiver()
    env = {**FAST, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    with serving(switchyard, repo, monkeypatch, receiver, env=env) as server:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            contexts = list(pool.map(lambda _: traced(lambda h: http_infer(server, h)), range(8)))
        traces = {ids(c)[0] for c in contexts}
        batches = receiver.spans.wait(
            lambda s: s.name == "switchyard.batch" and s.trace_id in traces and attrs(s.attributes)["switchyard.batch.size"] > 1
        )
        b = batches[0]
        size = attrs(b.attributes)["switchyard.batch.size"]
        # Each link names the server span of another request of the batch.
        assert len(b.links) == size - 1, (size, b.links)
        for link in b.links:
            [top] = receiver.spans.wait(lambda s: s.span_id == link.span_id and s.kind == SERVER)
            assert top.trace_id == link.trace_id != b.trace_id and top.trace_id in traces
        assert receiver.paths and all(p == ("/v1/traces", "application/x-protobuf") for p in receiver.paths), receiver.paths


def test_a_shadow_copy_is_a_span_linked_to_its_primary(switchyard, repo, monkeypatch):
    receiver = GrpcReceiver()
    # Only the callers' sampled traces: none of the server's own.
    with serving(switchyard, repo, monkeypatch, receiver, "--trace-sample-ratio", "0") as server:
        policy = b'{"weights": {"1": 100}, "shadow": {"version": "2", "percent": 100}}'
        req = urllib.request.Request(f"http://{server.admin}/admin/models/mlp/traffic", data=policy, method="PUT")
        urllib.request.urlopen(req).read()
        trace_id, client_span = ids(traced(lambda h: http_infer(server, h)))
        [top] = receiver.spans.wait(lambda s: s.trace_id == trace_id and s.parent_span_id == client_span)
        assert attrs(top.attributes)["switchyard.shadow.version"] == 2
        [shadow] = receiver.spans.wait(lambda s: s.name == "switchyard.shadow" and any(l.span_id == top.span_id for l in s.links))
        assert shadow.trace_id != trace_id and shadow.parent_span_id == b""
        a = attrs(shadow.attributes)
        assert a["switchyard.version"] == 2 and a["switchyard.routing"] == "shadow", a
        receiver.spans.wait(lambda s: s.name == "switchyard.batch" and s.parent_span_id == shadow.span_id)
        # Sampling at 0 traces no request of its own, but follows a sampled caller;
        # an unsampled caller's trace goes on untraced, its id kept in the answer.
        http_infer(server, {})
        unsampled = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-00"
        req = urllib.request.Request(f"http://{server.http}/v2/models/mlp/infer", data=BODY, headers={"traceparent": unsampled})
        with urllib.request.urlopen(req) as r:
            answer = r.headers["traceparent"]
        assert answer.startswith("00-" + "ab" * 16 + "-") and answer.endswith("-00") and answer != unsampled, answer
        # Spans leave in order: once a later sampled call's span is here, any
        # of the two calls before it would be too.
        later, _ = ids(traced(lambda h: http_infer(server, h)))
        receiver.spans.wait(lambda s: s.trace_id == later and s.kind == SERVER)
        assert not [s for s in receiver.spans.all_spans() if s.kind == SERVER and s.parent_span_id == b""]
        assert not [s for s in receiver.spans.all_spans() if s.trace_id == bytes.fromhex("ab" * 16)]


def test_with_the_receiver_down_serving_goes_on_and_drops_are_counted(switchyard, repo, monkeypatch):
    receiver = GrpcReceiver()
    url = receiver.url
    receiver.stop()  # a port that refuses
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "500")
    server = switchyard("--otlp-endpoint", url, models=repo)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: http_infer(server, {}), range(64)))
    assert all(a.as_numpy("output").shape == (1, 4) for a in answers)

    def dropped():
        text = urllib.request.urlopen(f"http://{server.http}/metrics").read().decode()
        return {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'switchyard_trace_spans_dropped_total\{reason="(\w+)"\} (\S+)', text)
        }

    deadline = time.time() + 20
    while time.time() < deadline and not (dropped().get("queue_full", 0) > 0 and dropped().get("export_failed", 0) > 0):
        time.sleep(0.2)
    d = dropped()
    assert d.get("queue_full", 0) > 0 and d.get("export_failed", 0) > 0, d
    assert "OTLP export failed" in server.log()
