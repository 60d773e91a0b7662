"""a3c-grpc: distributed Asynchronous Advantage Actor-Critic over gRPC. This package is the shared pure core."""

__version__ = "0.1.0"
