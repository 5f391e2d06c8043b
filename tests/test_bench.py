"""The benchmark's table of figures (scripts/benchmark/report.py) on the results of real runs, and
one real quick run of scripts/bench.py.

The table drives aggregation, target checks and rendering: these tests pin that each figure is
the median of its runs, that every target is checked (also on a figure the table does not show),
and that a row or a target naming a figure no run produced is an error rather than a silently
unchecked key.
"""

import json
import math
import os
import resource
import sys
from types import SimpleNamespace

import gevent
import pytest

from helpers import SCRIPTS, run_script

sys.path.insert(0, SCRIPTS)

from benchmark import codec, report, roles  # found through the path set just above
from benchmark.common import BenchError

# The results of a real quick run of three repetitions (runner.run_all(3, (0, 0), quick sizes)),
# as each client and the codec role reported them, floats rounded to 3 decimals.
RUNS = {
    ("raw", "rtt"): [
        {"per_s": 45026.087, "p50_us": 21.863, "p99_us": 26.47, "n": 5000, "ok": True,
         "server_cpu_us": 12.0, "client_cpu_us": 11.182},
        {"per_s": 27906.98, "p50_us": 19.359, "p99_us": 47.14, "n": 5000, "ok": True,
         "server_cpu_us": 10.0, "client_cpu_us": 11.126},
        {"per_s": 32248.43, "p50_us": 20.911, "p99_us": 61.592, "n": 5000, "ok": True,
         "server_cpu_us": 10.0, "client_cpu_us": 11.652},
    ],
    ("gko", "rtt"): [
        {"per_s": 31711.096, "p50_us": 30.435, "p99_us": 53.289, "n": 5000, "ok": True,
         "server_cpu_us": 16.0, "client_cpu_us": 15.761},
        {"per_s": 25592.543, "p50_us": 27.621, "p99_us": 64.786, "n": 5000, "ok": True,
         "server_cpu_us": 14.0, "client_cpu_us": 14.62},
        {"per_s": 35321.383, "p50_us": 27.682, "p99_us": 46.159, "n": 5000, "ok": True,
         "server_cpu_us": 14.0, "client_cpu_us": 14.249},
    ],
    ("gko", "rtt_server"): [
        {"per_s": 40413.767, "p50_us": 23.966, "p99_us": 47.09, "n": 5000, "ok": True,
         "server_cpu_us": 12.0, "client_cpu_us": 12.068},
        {"per_s": 27031.481, "p50_us": 23.676, "p99_us": 43.956, "n": 5000, "ok": True,
         "server_cpu_us": 14.0, "client_cpu_us": 10.042},
        {"per_s": 41039.041, "p50_us": 24.316, "p99_us": 29.414, "n": 5000, "ok": True,
         "server_cpu_us": 12.0, "client_cpu_us": 12.147},
    ],
    ("raw", "pipelined"): [
        {"per_s": 434443.573, "n": 50000, "ok": True, "server_cpu_us": 1.0, "client_cpu_us": 1.156},
        {"per_s": 430398.947, "n": 50000, "ok": True, "server_cpu_us": 1.2, "client_cpu_us": 1.206},
        {"per_s": 447978.019, "n": 50000, "ok": True, "server_cpu_us": 1.0, "client_cpu_us": 1.149},
    ],
    ("gko", "pipelined"): [
        {"per_s": 195145.843, "n": 50000, "ok": True, "server_cpu_us": 1.6, "client_cpu_us": 1.773},
        {"per_s": 206206.877, "n": 50000, "ok": True, "server_cpu_us": 1.6, "client_cpu_us": 1.78},
        {"per_s": 266536.767, "n": 50000, "ok": True, "server_cpu_us": 1.6, "client_cpu_us": 1.698},
    ],
    ("raw", "conns"): [
        {"per_s": 55604.93, "n": 10000, "ok": True, "server_cpu_us": 8.0, "client_cpu_us": 8.835},
        {"per_s": 54561.738, "n": 10000, "ok": True, "server_cpu_us": 8.0, "client_cpu_us": 8.966},
        {"per_s": 56621.54, "n": 10000, "ok": True, "server_cpu_us": 9.0, "client_cpu_us": 8.95},
    ],
    ("gko", "conns"): [
        {"per_s": 45410.932, "n": 10000, "ok": True, "server_cpu_us": 11.0,
         "client_cpu_us": 11.581},
        {"per_s": 41095.883, "n": 10000, "ok": True, "server_cpu_us": 10.0,
         "client_cpu_us": 12.276},
        {"per_s": 38724.753, "n": 10000, "ok": True, "server_cpu_us": 11.0,
         "client_cpu_us": 13.342},
    ],
    ("raw", "idle"): [
        {"n": 10000, "connect_seconds": 1.74, "ok": True, "rss_before_kb": 22608,
         "rss_after_kb": 117980, "bytes_per_conn": 9766.093},
        {"n": 10000, "connect_seconds": 2.461, "ok": True, "rss_before_kb": 22704,
         "rss_after_kb": 117996, "bytes_per_conn": 9757.901},
        {"n": 10000, "connect_seconds": 2.772, "ok": True, "rss_before_kb": 22560,
         "rss_after_kb": 117856, "bytes_per_conn": 9758.31},
    ],
    ("gko", "idle"): [
        {"n": 10000, "connect_seconds": 2.011, "ok": True, "rss_before_kb": 31196,
         "rss_after_kb": 44644, "bytes_per_conn": 1377.075},
        {"n": 10000, "connect_seconds": 3.196, "ok": True, "rss_before_kb": 31184,
         "rss_after_kb": 44628, "bytes_per_conn": 1376.666},
        {"n": 10000, "connect_seconds": 2.267, "ok": True, "rss_before_kb": 31144,
         "rss_after_kb": 44572, "bytes_per_conn": 1375.027},
    ],
    # runner.run_hub_phase((0, 0), quick sizes), three runs, recorded since (issue 13).
    ("gko", "hub"): [
        {"per_s": 128864.517, "direct_per_s": 288052.893, "ratio": 0.447, "hub_cpu_us": 3.0,
         "n": 50000, "ok": True},
        {"per_s": 133871.766, "direct_per_s": 277503.769, "ratio": 0.482, "hub_cpu_us": 3.0,
         "n": 50000, "ok": True},
        {"per_s": 132171.386, "direct_per_s": 275540.514, "ratio": 0.48, "hub_cpu_us": 2.8,
         "n": 50000, "ok": True},
    ],
    # runner.run_phase("gko", phase, (0, 0), quick sizes) for the secure phases, three runs of
    # each, recorded since (issue 14).
    ("gko", "secure_rtt"): [
        {"per_s": 16974.654, "p50_us": 56.234, "p99_us": 93.269, "n": 5000, "ok": True,
         "server_cpu_us": 28.0, "client_cpu_us": 28.951, "plain_per_s": 27302.552,
         "plain_p50_us": 31.647, "plain_p99_us": 55.103, "plain_server_cpu_us": 18.0,
         "plain_client_cpu_us": 16.336, "ratio": 0.622},
        {"per_s": 16801.455, "p50_us": 57.376, "p99_us": 91.757, "n": 5000, "ok": True,
         "server_cpu_us": 30.0, "client_cpu_us": 29.488, "plain_per_s": 24403.218,
         "plain_p50_us": 31.457, "plain_p99_us": 56.324, "plain_server_cpu_us": 16.0,
         "plain_client_cpu_us": 16.33, "ratio": 0.688},
        {"per_s": 17797.606, "p50_us": 54.511, "p99_us": 88.862, "n": 5000, "ok": True,
         "server_cpu_us": 30.0, "client_cpu_us": 28.077, "plain_per_s": 33444.377,
         "plain_p50_us": 28.984, "plain_p99_us": 51.057, "plain_server_cpu_us": 14.0,
         "plain_client_cpu_us": 14.949, "ratio": 0.532},
    ],
    ("gko", "secure_pipelined"): [
        {"per_s": 70575.838, "n": 50000, "ok": True, "server_cpu_us": 7.2, "client_cpu_us": 6.889,
         "plain_per_s": 266345.715, "plain_server_cpu_us": 2.0, "plain_client_cpu_us": 1.854,
         "ratio": 0.265},
        {"per_s": 71269.879, "n": 50000, "ok": True, "server_cpu_us": 7.0, "client_cpu_us": 6.871,
         "plain_per_s": 273032.05, "plain_server_cpu_us": 1.8, "plain_client_cpu_us": 1.821,
         "ratio": 0.261},
        {"per_s": 70615.573, "n": 50000, "ok": True, "server_cpu_us": 7.4, "client_cpu_us": 6.946,
         "plain_per_s": 233909.075, "plain_server_cpu_us": 2.2, "plain_client_cpu_us": 2.007,
         "ratio": 0.302},
    ],
    ("gko", "codec"): [
        {"ok": True, "frame_bytes": 58, "encode_ns": 240.143, "encode_plain_ns": 240.142,
         "decode_ns": 544.672, "roundtrip_ns": 848.688, "payload_encode_ns": 119.236,
         "payload_decode_ns": 265.417, "as_route_list_ns": 172.53, "call_overhead_ns": 15.963,
         "typed_struct_ns": 951.2, "json_struct_ns": 2500.4, "typed_struct_ratio": 0.38,
         "typed_route_struct_ns": 1120.7, "json_route_struct_ns": 3001.2,
         "typed_route_struct_ratio": 0.373},
        {"ok": True, "frame_bytes": 58, "encode_ns": 394.848, "encode_plain_ns": 396.868,
         "decode_ns": 1039.887, "roundtrip_ns": 1523.76, "payload_encode_ns": 191.676,
         "payload_decode_ns": 309.324, "as_route_list_ns": 190.027, "call_overhead_ns": 15.582,
         "typed_struct_ns": 1890.5, "json_struct_ns": 3800.1, "typed_struct_ratio": 0.497,
         "typed_route_struct_ns": 1650.2, "json_route_struct_ns": 3900.9,
         "typed_route_struct_ratio": 0.423},
        {"ok": True, "frame_bytes": 58, "encode_ns": 240.868, "encode_plain_ns": 241.851,
         "decode_ns": 547.791, "roundtrip_ns": 833.063, "payload_encode_ns": 118.991,
         "payload_decode_ns": 178.112, "as_route_list_ns": 107.87, "call_overhead_ns": 16.136,
         "typed_struct_ns": 960.3, "json_struct_ns": 2480.0, "typed_struct_ratio": 0.387,
         "typed_route_struct_ns": 1100.9, "json_route_struct_ns": 2990.4,
         "typed_route_struct_ratio": 0.368},
    ],
}

QUICK_SIZES = {"pipelined_n": 50000, "conns": 100, "per_conn": 100, "idle_n": 10000,
               "secure_pipelined_n": 50000}

# The keys of bench.py's JSON line, as the benchmark wrote them before it was split into modules.
JSON_KEYS = {
    "body_bytes", "bytes_per_idle_conn", "bytes_per_idle_conn_ratio", "codec_as_route_list_ns",
    "codec_call_overhead_ns", "codec_decode_ns", "codec_encode_ns", "codec_encode_plain_ns",
    "codec_payload_decode_ns", "codec_payload_encode_ns", "codec_roundtrip_ns", "conns",
    "conns_client_cpu_us", "conns_client_cpu_us_ratio", "conns_per_s", "conns_ratio",
    "conns_server_cpu_us", "conns_server_cpu_us_ratio", "cpus", "gevent", "git", "greenockam",
    "idle_connections", "missed", "pipelined_client_cpu_us", "pipelined_client_cpu_us_ratio",
    "pipelined_messages", "pipelined_per_s", "pipelined_ratio", "pipelined_server_cpu_us",
    "pipelined_server_cpu_us_ratio", "python", "quick", "raw_bytes_per_idle_conn",
    "raw_conns_client_cpu_us", "raw_conns_per_s", "raw_conns_server_cpu_us",
    "raw_pipelined_client_cpu_us", "raw_pipelined_per_s", "raw_pipelined_server_cpu_us",
    "raw_rtt_client_cpu_us", "raw_rtt_p50_us", "raw_rtt_p99_us", "raw_rtt_per_s",
    "raw_rtt_server_client_cpu_us", "raw_rtt_server_cpu_us", "raw_rtt_server_p50_us",
    "raw_rtt_server_p99_us", "raw_rtt_server_per_s", "raw_rtt_server_server_cpu_us",
    "repetitions", "round_trips_per_conn", "rtt_client_cpu_us", "rtt_client_cpu_us_ratio",
    "rtt_messages", "rtt_p50_ratio", "rtt_p50_us", "rtt_p99_ratio", "rtt_p99_us", "rtt_per_s",
    "rtt_ratio", "rtt_server_client_cpu_us", "rtt_server_client_cpu_us_ratio",
    "rtt_server_cpu_us", "rtt_server_cpu_us_ratio", "rtt_server_p50_ratio", "rtt_server_p50_us",
    "rtt_server_p99_ratio", "rtt_server_p99_us", "rtt_server_per_s", "rtt_server_ratio",
    "rtt_server_server_cpu_us", "rtt_server_server_cpu_us_ratio", "seconds", "targets",
    # added since: typed messages against json (issue 11)
    "typed_struct_ns", "typed_struct_ratio", "typed_route_struct_ns", "typed_route_struct_ratio",
    "json_struct_ns", "json_route_struct_ns",
    # added since: the hub (issue 13)
    "hub_per_s", "hub_direct_per_s", "hub_ratio", "hub_cpu_us",
    # added since: secure channels (issue 14)
    "secure_pipelined_messages",
    "secure_rtt_per_s", "secure_rtt_plain_per_s", "secure_rtt_ratio", "secure_rtt_p50_us",
    "secure_rtt_plain_p50_us", "secure_rtt_server_cpu_us", "secure_rtt_plain_server_cpu_us",
    "secure_rtt_client_cpu_us", "secure_rtt_plain_client_cpu_us",
    "secure_pipelined_per_s", "secure_pipelined_plain_per_s", "secure_pipelined_ratio",
    "secure_pipelined_server_cpu_us", "secure_pipelined_plain_server_cpu_us",
    "secure_pipelined_client_cpu_us", "secure_pipelined_plain_client_cpu_us",
}
META_KEYS = {
    "body_bytes", "idle_connections", "rtt_messages", "pipelined_messages", "conns",
    "round_trips_per_conn", "repetitions", "quick", "cpus", "python", "gevent", "greenockam",
    "git", "seconds", "targets", "missed", "secure_pipelined_messages",
}
PUBLISHED_TARGETS = {  # README, Performance
    "rtt_ratio": 0.75,
    "pipelined_ratio": 0.80,
    "conns_ratio": 0.75,
    "codec_roundtrip_ns": 1300.0,
    "bytes_per_idle_conn": 20480.0,
    "typed_struct_ratio": 0.5,
    "typed_route_struct_ratio": 0.5,
    "hub_ratio": 0.5,
    "secure_rtt_ratio": 0.75,
    "secure_pipelined_ratio": 0.5,
}

# A figure the table does not have: an in-process ratio no codec run measures.
TYPED_ROW = report.Row("typed_enum_ratio", "typed enum encode + decode / json", "x", ".3f",
                       "codec", "typed_enum_ratio", report.LOWER, target=1.0)


def lines_with(lines, text):
    return [line for line in lines if text in line]


# --- aggregation ----------------------------------------------------------------------------------


def test_a_figure_is_the_median_of_its_runs_not_their_mean():
    figures = report.aggregate(RUNS)
    assert figures["codec_roundtrip_ns"] == 848.688  # runs 848.688, 1523.76, 833.063
    assert figures["rtt_per_s"] == 31711.096
    assert figures["bytes_per_idle_conn"] == 1376.666


def test_a_ratio_is_greenockam_median_over_raw_gevent_median():
    figures = report.aggregate(RUNS)
    assert figures["raw_rtt_per_s"] == 32248.43
    assert figures["rtt_ratio"] == 31711.096 / 32248.43
    assert figures["raw_pipelined_per_s"] == 434443.573
    assert figures["pipelined_ratio"] == 206206.877 / 434443.573


def test_the_server_side_figures_are_compared_with_the_raw_client_and_server_runs():
    figures = report.aggregate(RUNS)
    assert figures["rtt_server_per_s"] == 40413.767
    assert figures["raw_rtt_server_per_s"] == figures["raw_rtt_per_s"] == 32248.43
    assert figures["rtt_server_ratio"] == 40413.767 / 32248.43


def test_a_ratio_over_a_raw_figure_of_zero_is_nan_and_null_in_the_json_line():
    runs = dict(RUNS)
    runs[("raw", "pipelined")] = [dict(r, server_cpu_us=0.0) for r in RUNS[("raw", "pipelined")]]
    figures = report.aggregate(runs)
    assert math.isnan(figures["pipelined_server_cpu_us_ratio"])
    assert json.loads(report.json_line(figures, {}))["pipelined_server_cpu_us_ratio"] is None


def test_the_figures_and_the_metadata_are_the_keys_of_the_json_line():
    figures = report.aggregate(RUNS)
    line = report.json_line(figures, dict.fromkeys(META_KEYS, 0))
    assert set(json.loads(line)) == JSON_KEYS


def test_the_hub_ratio_is_the_median_of_each_runs_own_ratio():
    """Through the hub and straight are measured by one client in one run: each run's ratio is
    its own, and the figure is their median, not the ratio of the medians."""
    figures = report.aggregate(RUNS)
    assert figures["hub_ratio"] == 0.48  # runs 0.447, 0.482, 0.48
    assert figures["hub_per_s"] == 132171.386
    assert figures["hub_direct_per_s"] == 277503.769
    assert "raw_hub_per_s" not in figures


def test_a_secure_ratio_is_the_median_of_each_runs_own_ratio():
    """Plain and through the channel are measured by one client in one run, as the hub's."""
    figures = report.aggregate(RUNS)
    assert figures["secure_rtt_ratio"] == 0.622  # runs 0.622, 0.688, 0.532
    assert figures["secure_rtt_per_s"] == 16974.654
    assert figures["secure_rtt_plain_per_s"] == 27302.552
    assert figures["secure_pipelined_ratio"] == 0.265  # runs 0.265, 0.261, 0.302
    assert "raw_secure_rtt_per_s" not in figures


def test_the_secure_rows_show_each_figure_through_the_channel_and_plain():
    figures = report.aggregate(RUNS)
    assert figures["secure_pipelined_server_cpu_us"] == 7.2  # runs 7.2, 7.0, 7.4
    assert figures["secure_pipelined_plain_server_cpu_us"] == 2.0  # runs 2.0, 1.8, 2.2
    lines = render(PUBLISHED_TARGETS)
    (row,) = lines_with(lines, "pipelined through a secure channel, 50,000 msgs (msg/s)")
    assert row.split("|")[2].strip() == "70,616"
    (row,) = lines_with(lines, "secure / plain")[1:]
    assert [cell.strip() for cell in row.split("|")[2:]] == ["0.265", "–", ">= 0.5  MISSED"]


class CountingNode:
    """A node for roles.gko_pipelined that echoes at once and records how many messages were
    unanswered at each send."""

    def __init__(self):
        self.sent = self.received = 0
        self.unanswered = []

    def send(self, route, body):
        self.sent += 1
        self.unanswered.append(self.sent - self.received)

    def receive(self, timeout=None):
        while self.received == self.sent:
            gevent.sleep(0)  # let the sender greenlet run: the stand-in for a network wait
        self.received += 1
        return SimpleNamespace(body=roles.MESSAGE)  # all gko_pipelined reads of a reply


def test_a_windowed_pipelined_run_keeps_at_most_its_window_unanswered():
    node = CountingNode()
    window = 3 * roles.WINDOW_STEP
    _, ok = roles.gko_pipelined(node, ["x"], 20 * roles.WINDOW_STEP, 5.0, window)
    assert ok and node.received == node.sent == 20 * roles.WINDOW_STEP
    assert max(node.unanswered) <= window
    unbounded = CountingNode()
    roles.gko_pipelined(unbounded, ["x"], 20 * roles.WINDOW_STEP, 5.0)
    assert max(unbounded.unanswered) > window  # what the window prevents


def test_the_codec_rows_read_the_fields_the_codec_role_measures():
    runs = dict(RUNS)
    runs[("gko", "codec")] = [codec.measure(1000)]
    figures = report.aggregate(runs)
    for row in report.ROWS:
        if row.phase == "codec":
            assert figures[row.key] > 0, row.key


def test_a_row_naming_a_field_no_run_produced_is_an_error():
    with pytest.raises(BenchError, match="typed_enum_ratio"):
        report.aggregate(RUNS, report.ROWS + (TYPED_ROW,))


def test_a_row_naming_a_phase_that_never_ran_is_an_error():
    runs = {key: value for key, value in RUNS.items() if key != ("raw", "idle")}
    with pytest.raises(BenchError, match="bytes_per_idle_conn.*no raw run of phase 'idle'"):
        report.aggregate(runs)


def test_two_rows_yielding_one_figure_are_an_error():
    again = report.Row("rtt_ratio", "round trips again", "x", ".3f", "rtt", "per_s")
    with pytest.raises(BenchError, match="rtt_ratio: yielded by two rows"):
        report.aggregate(RUNS, report.ROWS + (again,))


def test_a_baseline_without_a_ratio_key_is_refused_when_the_table_is_written():
    with pytest.raises(ValueError, match="baseline"):
        report.Row("x_per_s", "x", "msg/s", ",.0f", "rtt", "per_s", baseline="rtt")


# --- targets --------------------------------------------------------------------------------------


def test_the_published_targets_are_the_defaults():
    assert report.parse_targets([]) == PUBLISHED_TARGETS


def test_a_target_is_met_above_or_below_it_as_the_figure_says():
    figures = report.aggregate(RUNS)
    met = report.check_targets(figures, PUBLISHED_TARGETS)
    assert met == {
        "rtt_ratio": True,  # 0.983, higher is better
        "pipelined_ratio": False,  # 0.475
        "conns_ratio": False,  # 0.739
        "bytes_per_idle_conn": True,  # 1,377 bytes, lower is better
        "codec_roundtrip_ns": True,  # 849 ns, lower is better
        "typed_struct_ratio": True,  # 0.387
        "typed_route_struct_ratio": True,  # 0.373
        "hub_ratio": False,  # 0.480
        "secure_rtt_ratio": False,  # 0.622
        "secure_pipelined_ratio": False,  # 0.265
    }
    assert list(met) == [
        "rtt_ratio", "pipelined_ratio", "conns_ratio", "bytes_per_idle_conn", "hub_ratio",
        "secure_rtt_ratio", "secure_pipelined_ratio", "codec_roundtrip_ns", "typed_struct_ratio",
        "typed_route_struct_ratio",
    ]


def test_a_target_on_a_nan_figure_is_missed():
    runs = dict(RUNS)
    runs[("raw", "conns")] = [dict(r, server_cpu_us=0.0) for r in RUNS[("raw", "conns")]]
    figures = report.aggregate(runs)
    assert report.check_targets(figures, {"conns_server_cpu_us_ratio": 10.0}) == {
        "conns_server_cpu_us_ratio": False
    }


def test_a_target_given_on_the_command_line_overrides_or_adds_to_the_published_ones():
    targets = report.parse_targets(["rtt_ratio=0.5", " codec_decode_ns = 600 "])
    assert targets == dict(PUBLISHED_TARGETS, rtt_ratio=0.5, codec_decode_ns=600.0)


@pytest.mark.parametrize("item", ["typed_enum_ratio=1", "raw_rtt_per_s=1", "rtt_ratio",
                                  "rtt_ratio=fast"])
def test_a_command_line_target_that_is_no_figure_or_no_number_is_refused(item):
    with pytest.raises(BenchError):
        report.parse_targets([item])


def test_a_target_on_a_figure_no_run_produced_is_an_error():
    figures = report.aggregate(RUNS)
    with pytest.raises(BenchError, match="typed_enum_ratio"):
        report.check_targets(figures, dict(PUBLISHED_TARGETS, typed_enum_ratio=1.0))


def test_a_target_on_a_row_whose_figure_is_missing_is_an_error():
    # The table has the row, but the figures given were made without it.
    rows = report.ROWS + (TYPED_ROW,)
    with pytest.raises(BenchError, match="typed_enum_ratio"):
        report.check_targets(report.aggregate(RUNS), report.default_targets(rows), rows)


# --- rendering ------------------------------------------------------------------------------------


def render(targets, runs=RUNS):
    figures = report.aggregate(runs)
    return report.render(figures, targets, report.check_targets(figures, targets), QUICK_SIZES, 3)


def test_the_table_shows_raw_greenockam_ratio_and_target_of_a_figure():
    lines = render(PUBLISHED_TARGETS)
    assert lines[0].startswith("medians of 3 run(s); ratio = greenockam / raw gevent")
    (row,) = lines_with(lines, "pipelined, 50,000 msgs (msg/s)")
    cells = [cell.strip() for cell in row.split("|")]
    assert cells == ["pipelined, 50,000 msgs (msg/s)", "434,444", "206,207", "0.475",
                     ">= 0.8  MISSED"]


def test_a_met_target_is_shown_with_its_direction_and_no_mark():
    lines = render(PUBLISHED_TARGETS)
    (row,) = lines_with(lines, "codec encode + decode (ns)")
    assert row.split("|")[-1].strip() == "<= 1,300"


def test_a_target_on_a_figure_the_table_hides_is_checked_and_shown():
    label = "codec encode, reply without a hop to pop (ns)"
    assert not lines_with(render(PUBLISHED_TARGETS), label)
    figures = report.aggregate(RUNS)
    targets = report.parse_targets(["codec_encode_plain_ns=100"])
    assert report.check_targets(figures, targets)["codec_encode_plain_ns"] is False
    (row,) = lines_with(render(targets), label)
    assert row.split("|")[-1].strip() == "<= 100  MISSED"


def test_targets_on_a_value_and_on_its_ratio_share_one_cell():
    lines = render({"rtt_p50_us": 25.0, "rtt_p50_ratio": 2.0})
    rtt_row, rtt_server_row = lines_with(lines, "latency p50 (µs)")
    assert rtt_row.split("|")[-1].strip() == "<= 25  MISSED; ratio <= 2"  # 27.7 µs, ratio 1.32
    assert rtt_server_row.split("|")[-1].strip() == "–"


# --- bench.py -------------------------------------------------------------------------------------


def run_bench(*args, timeout):
    return run_script("bench.py", *args, timeout=timeout)


def test_a_target_naming_no_figure_is_refused_before_anything_runs():
    done = run_bench("--target", "typed_enum_ratio=1", timeout=60)
    assert done.returncode == 2
    assert "typed_enum_ratio" in done.stderr
    assert done.stdout == ""


@pytest.mark.timeout(400)
def test_a_quick_run_exits_0_and_ends_with_the_json_line_of_every_figure():
    # The idle phase holds 10,000 connections open in the server and in the client.
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 10500:
        pytest.skip("the hard limit on open files is below the idle phase's 10,000 connections")
    cpu = min(os.sched_getaffinity(0))
    done = run_bench("--quick", "--cpus", f"{cpu},{cpu}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert set(result) == JSON_KEYS
    assert result["quick"] is True and result["repetitions"] == 1
    assert result["targets"] == PUBLISHED_TARGETS
    assert set(result["missed"]) <= set(PUBLISHED_TARGETS)
    assert result["cpus"] == {"server": cpu, "client": cpu}
