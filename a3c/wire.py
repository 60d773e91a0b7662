"""What both ends of the gRPC link must agree on: the service name, message-size limits and keepalive."""

from __future__ import annotations

from proto import a3c_pb2 as pb

# The gRPC service's full name, as routes, health checks and probes spell it.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Learner"].full_name
# Room beyond the raw tensor bytes for names, shapes, episode returns and framing.
_MESSAGE_HEADROOM = 256 * 1024
# Never less: an evaluator's report carries a short video, whatever the size of the network.
MIN_MESSAGE_BYTES = 4 * 1024 * 1024


def message_limit(num_params: int) -> int:
    """The largest message either side accepts: every parameter in float32, plus headroom."""
    return max(num_params * 4 + num_params // 8 + _MESSAGE_HEADROOM, MIN_MESSAGE_BYTES)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC options used by the learner's server and the actors' channels alike."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]

