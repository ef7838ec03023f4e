"""The chart geometry (``studio.charts``): round axes that cover the data, bars in proportion, "no data"."""

from __future__ import annotations

import math

import pytest

from studio import charts


@pytest.mark.parametrize(
    ("low", "high"), [(0, 2480), (0, 7), (1.5, 2.0), (0.5768, 3.763), (836, 1154), (0, 2e-4), (-3, 12), (5, 5)]
)
def test_scale_ticks_are_round_and_cover_the_data(low: float, high: float) -> None:
    scale = charts.nice_scale(low, high)
    assert scale.ticks[0] <= low and scale.ticks[-1] >= high
    assert 2 <= len(scale.ticks) <= 7
    mantissa = scale.step / 10 ** math.floor(math.log10(scale.step))
    assert round(mantissa, 6) in (1, 2, 2.5, 5)
    for tick in scale.ticks:
        assert abs(tick / scale.step - round(tick / scale.step)) < 1e-6  # every tick a multiple of the step


def test_counts_get_whole_ticks_with_thousands_separators() -> None:
    scale = charts.nice_scale(0, 3, whole=True)
    assert scale.ticks == (0, 1, 2, 3)
    counts = charts.nice_scale(0, 12480, whole=True)
    assert [counts.label(v) for v in counts.ticks] == ["0", "5,000", "10,000", "15,000"]


def test_tick_labels_take_the_decimals_of_the_step() -> None:
    assert [charts.tick_label(v, 0.25) for v in (0, 0.25, 1.5)] == ["0", "0.25", "1.50"]
    assert [charts.tick_label(v, 5e-5) for v in (5e-5, 1.5e-4)] == ["5e-5", "1.5e-4"]


def test_bar_height_is_proportional_to_its_count() -> None:
    chart = charts.bar_chart([("a", 100), ("b", 50), ("c", 25)], "Rows", y_unit="rows")
    heights = [bar.height for bar in chart.bars]
    assert heights[0] == pytest.approx(2 * heights[1], abs=0.2) == pytest.approx(4 * heights[2], abs=0.4)
    assert all(bar.y + bar.height == pytest.approx(chart.bottom) for bar in chart.bars)  # all stand on zero
    assert [bar.count for bar in chart.bars] == ["100", "50", "25"]
    assert chart.bars[0].tooltip == "a: 100 rows"


def test_bar_chart_axis_and_summary_name_the_counts() -> None:
    chart = charts.bar_chart([("1–3", 1210), ("4–7", 2480)], "Tokens per row", y_unit="rows")
    assert [tick.label for tick in chart.y_ticks] == ["0", "1,000", "2,000", "3,000"]
    assert [tick.label for tick in chart.x_ticks] == ["1–3", "4–7"]  # few categories: each one labelled
    assert chart.summary == "Tokens per row (rows): 1–3 1,210, 4–7 2,480"


def test_many_categories_label_only_the_first_and_last() -> None:
    chart = charts.bar_chart([(f"{n}–{n + 9}", n) for n in range(0, 400, 10)], "Tokens per row")
    assert [tick.label for tick in chart.x_ticks] == ["0–9", "390–399"]


@pytest.mark.parametrize("pairs", [[], [("a", 0), ("b", 0)]])
def test_empty_bar_chart_says_no_data(pairs: list[tuple[str, float]]) -> None:
    chart = charts.bar_chart(pairs, "Tokens per row")
    assert chart.empty and chart.bars == [] and chart.summary == "Tokens per row: no data"


def test_a_share_chart_draws_zero_bars_on_an_axis_to_its_maximum() -> None:
    chart = charts.bar_chart([("base", 0), ("tuned", 0)], "Rows passing", y_unit="% of rows", y_max=100)
    assert not chart.empty and [bar.height for bar in chart.bars] == [0, 0]
    assert chart.y_ticks[-1].label == "100"


def test_stacked_bars_stack_segments_and_skip_zeros() -> None:
    chart = charts.stacked_bar_chart(
        ["Mar 01", "Mar 02"], [("API", "#111", [30, 0]), ("Arena", "#222", [10, 5])], "Tokens per day", y_unit="tokens"
    )
    first, second = chart.stacks
    assert [s.tooltip for s in first.segments] == ["Mar 01: 30 API tokens", "Mar 01: 10 Arena tokens"]
    assert [s.label for s in second.segments] == ["Arena"]
    assert first.segments[1].y + first.segments[1].height == pytest.approx(first.segments[0].y)
    assert sum(s.height for s in first.segments) == pytest.approx(8 * second.segments[0].height, abs=0.3)
    assert chart.summary == "Tokens per day (tokens): API 30, Arena 15 in total; Mar 01 40; Mar 02 5"
    assert charts.stacked_bar_chart(["Mar 01"], [("API", "#111", [0])], "Tokens per day").empty


def test_line_chart_has_round_ticks_on_both_axes() -> None:
    chart = charts.line_chart([("loss", [(1, 2.0), (2, 1.5), (3, float("nan"))]), ("eval", [])], "Loss")
    assert [line.name for line in chart.lines] == ["loss"]
    assert [tick.label for tick in chart.y_ticks] == ["1.4", "1.6", "1.8", "2.0"]
    assert (chart.x_ticks[0].label, chart.x_ticks[-1].label) == ("1", "2")
    assert chart.legend[1].text == "no data yet" and "eval: no data yet" in chart.summary
    assert [m.tooltip for m in chart.lines[0].markers] == ["loss: 2 at step 1", "loss: 1.5 at step 2"]


def test_line_chart_from_zero_starts_the_axis_at_zero() -> None:
    chart = charts.line_chart([("memory", [(1, 1.13), (2, 1.14)])], "Memory", y_unit="GiB", from_zero=True)
    assert chart.y_ticks[0].label == "0"


def test_line_chart_without_points_says_so() -> None:
    chart = charts.line_chart([("loss", [])], "Loss")
    assert chart.empty and chart.lines == [] and chart.summary == "Loss: loss: no data yet"


def test_interval_chart_places_each_row_on_a_round_axis() -> None:
    chart = charts.interval_chart([("sharp", 1082, 1031, 1140), ("dull", 918, 850, 990)], "Scores")
    assert [tick.label for tick in chart.x_ticks] == ["800", "900", "1,000", "1,100", "1,200"]
    sharp, dull = chart.intervals
    assert sharp.low < sharp.value < sharp.high and dull.value < sharp.value
    assert chart.summary == "Scores: sharp 1,082 (1,031–1,140); dull 918 (850–990)"
    assert charts.interval_chart([], "Scores").empty


def test_values_read_as_an_engineer_expects() -> None:
    assert [charts.format_value(v) for v in (2e-4, 0.12345, 1.23456, 2480, 12345, None)] == [
        "2e-4",
        "0.1235",
        "1.235",
        "2,480",
        "12.3k",
        "–",
    ]
