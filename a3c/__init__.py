"""a3c-grpc: distributed Asynchronous Advantage Actor-Critic over gRPC. 

This package is the pure core both services share: the model, environments, losses, tensor codec, wire
framing and configuration. It imports neither service nor the applications (apps/)."""

__version__ = "0.1.0"
