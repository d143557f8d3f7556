"""An OTLP/gRPC trace receiver for the tracing benchmarks: takes every
export (parsed with OpenTelemetry's own protos), counts the spans, and
writes the count to COUNT_FILE after each call.

    .venv-test/bin/python loadtest/otlp-sink.py PORT COUNT_FILE
"""

import concurrent.futures
import sys
import threading

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path):
        self.path, self.spans, self.lock = path, 0, threading.Lock()

    def Export(self, request, context):
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += n
            with open(self.path, "w") as f:
                f.write(f"{self.spans}\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port, path = sys.argv[1], sys.argv[2]
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(path), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
