"""What the client, the model server and the agent share, and nothing else.

- :mod:`protocol.wire`: the ``weiserving.v1`` gRPC methods and their msgpack
  request and response codec;
- :mod:`protocol.tensor`: the ndarray msgpack extension type and the decoding
  limits;
- :mod:`protocol.orca`: the ORCA load report every response carries;
- :mod:`protocol.status`: :class:`~protocol.status.StatusDoc`, the model
  server's status document, which the sidecar agent reads.

Imports only the standard library, numpy and msgpack: any process that
speaks to a pod, or is a pod, can depend on it without the rest.
"""
