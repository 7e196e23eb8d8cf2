"""Names in a config are validated by the registry that owns them (methods, data sources, stream strategies), so a
new one is its file plus a registry line: config.py imports none of them."""
import pytest

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.streams.strategies import STRATEGIES, build_strategy


@pytest.mark.parametrize("override, key", [("stream.strategy=rehearse", "stream.strategy"),
                                           ("sequence.strategies=[joint,rehearse]", "sequence.strategies")])
def test_an_unknown_strategy_is_one_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == (f"config error: {key}: unknown strategy 'rehearse' (choose "
                            f"{', '.join(STRATEGIES)})")


def test_every_registered_strategy_builds_from_the_default_config():
    cfg = load_config(None, [])
    for name in STRATEGIES:
        assert type(build_strategy(name, cfg)).__name__ == {"sequential": "Strategy"}.get(name, name.capitalize())
