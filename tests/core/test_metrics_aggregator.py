from fme.core.metrics_aggregator import MeanAggregator


def test_count_weighted_not_mean_of_means():
    agg = MeanAggregator()
    agg.record("loss", 1.0, count=3)
    agg.record("loss", 5.0, count=1)
    assert agg.get_means() == {"loss": (3 * 1.0 + 5.0) / 4}


def test_state_round_trip():
    agg = MeanAggregator()
    agg.record_all({"a": 2.0, "b": 4.0}, count=2)
    other = MeanAggregator()
    other.load_state(agg.get_state())
    other.record("a", 5.0, count=1)
    assert other.get_means() == {"a": 3.0, "b": 4.0}
