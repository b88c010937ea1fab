"""The Open Inference Protocol (OIP, KServe v2), beside our own ``weiserving.v1``.

gRPC: service ``inference.GRPCInferenceService`` (:data:`SERVICE`), the six
core methods of the specification (:data:`METHODS`): ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer. The
messages are ``grpc_predict_v2.proto`` beside this file, written from the
public specification with its field numbers; :mod:`.grpc_predict_v2_pb2` is
generated from it by grpcio-tools and committed (``make proto`` regenerates
it), so neither a user nor the server needs protoc. It lives in a private
descriptor pool: Triton's client registers the same ``inference.*`` names
in protobuf's default pool, and both must load in one process.

REST: ``/v2/...`` with JSON tensors and the binary tensor extension
(:mod:`.rest`).

- :mod:`.tensors`: OIP datatypes <-> numpy, raw buffers, typed contents;
- :mod:`.infer`: ModelInfer request and response (both sides), versions;
- :mod:`.rest`: the REST bodies.

Model versions are strings in OIP: ``""`` is the latest loaded version,
otherwise a decimal integer (ours are integers). Load reports, priority and
retry-after travel exactly as for ``weiserving.v1`` (see :mod:`protocol.wire`):
trailing metadata on gRPC; on REST, headers of the same names (the ORCA report
base64-encoded, as gRPC sends ``-bin`` values over HTTP/2), plus ``Retry-After``.

Imports the standard library, numpy and google.protobuf (only this subpackage).
"""

from __future__ import annotations

from protocol.oip import grpc_predict_v2_pb2 as pb

__all__ = ["EXTENSIONS", "METHODS", "SERVICE", "pb"]

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
METHODS = {m.name: f"/{SERVICE}/{m.name}" for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
EXTENSIONS = ("binary_tensor_data",)
"""The OIP extensions wei-serve serves (REST's binary tensors); Triton's others are not served."""
