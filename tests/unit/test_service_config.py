import pytest

from registry.errors import RecordError
from registry.service_config import BalancerSpec, ServiceConfig, decode_config, encode_config


def test_roundtrip_and_json_shape():
    cfg = ServiceConfig(splits={"ctr": {12: 90, 13: 10}},
                        balancer=BalancerSpec(policy="weighted_p2c", knobs={"choices": 2}))
    data = encode_config(cfg)
    assert b'"splits":{"ctr":{"12":90.0,"13":10.0}}' in data
    assert decode_config(data) == cfg


@pytest.mark.parametrize("splits, match", [
    ({"ctr": {12: 90, 13: 20}}, "summing to 100"),
    ({"ctr": {12: -10, 13: 110}}, ">= 0"),
    ({"ctr": {}}, "non-empty"),
    ({"ctr": {"x": 100}}, "non-negative integer"),
    ({"bad name!": {1: 100}}, "A-Za-z0-9"),
    ({"ctr": {1: float("nan")}}, "finite"),
])
def test_invalid_splits_refused(splits, match):
    with pytest.raises(RecordError, match=match):
        ServiceConfig(splits=splits)


def test_bad_balancer_refused():
    with pytest.raises(RecordError):
        BalancerSpec(policy="p2c; drop table")
    with pytest.raises(RecordError):
        BalancerSpec(knobs={"x": [1, 2]})


@pytest.mark.parametrize("data", [b"", b"nope", b"[]", b'{"splits": {"ctr": {"1": 50}}}', b'{"schema": 7}',
                                  b'{"balancer": 3}', b'{"updated_ms": "x"}'])
def test_decode_garbage_raises_record_error(data):
    with pytest.raises(RecordError):
        decode_config(data)


def test_pick_version_follows_shares():
    cfg = ServiceConfig(splits={"ctr": {12: 90, 13: 10}})
    picks = [cfg.pick_version("ctr", i / 1000) for i in range(1000)]
    assert picks.count(13) == 100 and picks.count(12) == 900
    assert cfg.pick_version("other", 0.5) is None
    zero = ServiceConfig(splits={"ctr": {12: 0, 13: 100}})
    assert {zero.pick_version("ctr", u / 10) for u in range(10)} == {13}
