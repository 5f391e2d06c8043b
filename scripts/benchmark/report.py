"""The benchmark's one table of figures, which drives aggregation, targets and rendering.

Each :class:`Row` of :data:`ROWS` is one figure: its JSON key, label and unit, the runs it is read
from (a phase and a field of each run's result), how those runs are aggregated, which way is
better, whether raw gevent measured the same thing (then it also yields ``raw_<key>`` and a ratio
greenockam / raw), and its targets if any. :func:`aggregate` turns every run into the figures,
:func:`check_targets` checks every target against them, and :func:`render` prints the table:
all three are driven by :data:`ROWS` alone, so a target is checked whether or not its row is
shown, and a row or a target that names a figure no run produced is a
:class:`~.common.BenchError`, never a silent gap.

Adding a figure is one row here and one measuring function: in :mod:`.roles` for a figure that
needs a server and a client (a field of a phase's result), in :mod:`.codec` for one measured
in-process (a field of the ``codec`` phase, e.g. the ratio of a typed codec's encode + decode
time to ``json.dumps`` + ``json.loads`` of the same data).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .common import BenchError, Runs

HIGHER = 1  # Row.better: a larger value is better
LOWER = -1  # Row.better: a smaller value is better
NAN = float("nan")


@dataclass(frozen=True)
class Row:
    """One figure of the benchmark.

    Attributes:
        key: the JSON key of greenockam's figure.
        label: the text in the table's first column; ``str.format`` fields are filled in from
            the run's sizes (e.g. ``{pipelined_n:,}``).
        unit: shown after the label, in parentheses.
        fmt: the format spec of the value and of the raw gevent value.
        phase: the runs it is read from: ``runs[("gko", phase)]``.
        field: the field of each of those runs' results.
        better: :data:`HIGHER` or :data:`LOWER`; the ratio's direction is the same.
        baseline: the phase whose raw gevent runs measured the same thing, or None; when set the
            row also yields ``raw_<key>`` and ``ratio``.
        ratio: the JSON key of greenockam / raw gevent (NaN when raw is not above 0).
        target: the published bound on the value, or None.
        ratio_target: the published bound on the ratio, or None.
        show: whether the table shows it when no target applies (always in the JSON line).
        aggregate: how the runs' values become the figure.
    """

    key: str
    label: str
    unit: str
    fmt: str
    phase: str
    field: str
    better: int = HIGHER
    baseline: Optional[str] = None
    ratio: Optional[str] = None
    target: Optional[float] = None
    ratio_target: Optional[float] = None
    show: bool = True
    aggregate: Callable[[Sequence[float]], float] = statistics.median

    def __post_init__(self) -> None:
        if (self.baseline is None) != (self.ratio is None):
            raise ValueError(f"row {self.key}: a baseline and a ratio key go together")
        if self.ratio_target is not None and self.ratio is None:
            raise ValueError(f"row {self.key}: a ratio target needs a baseline")
        if self.better not in (HIGHER, LOWER):
            raise ValueError(f"row {self.key}: better is HIGHER or LOWER")

    def target_keys(self) -> Tuple[str, ...]:
        """The keys a target may name in this row: the value's, and the ratio's if it has one."""
        return (self.key,) if self.ratio is None else (self.key, self.ratio)


def _cpu(phase: str, side: str, baseline: Optional[str] = None, show: bool = True) -> Row:
    """The row of the CPU per message the ``side`` process spent in ``phase``."""
    key = f"{phase}_{side}_cpu_us"
    return Row(key, f"  {side} CPU per message", "µs", ".2f", phase, f"{side}_cpu_us", LOWER,
               baseline=baseline or phase, ratio=key + "_ratio", show=show)


def _secure(phase: str, label: str, target: float, latency: bool) -> Tuple[Row, ...]:
    """The rows of a secure phase: each figure through the channel and the same client's plain
    one (the same field prefixed ``plain_``), and the ratio secure / plain messages/s of each
    run (the median of those, not the ratio of the medians)."""
    def pair(field: str, text: str, unit: str, fmt: str, better: int) -> Tuple[Row, Row]:
        return (
            Row(f"{phase}_{field}", f"{text}, secure", unit, fmt, phase, field, better),
            Row(f"{phase}_plain_{field}", f"{text}, plain", unit, fmt, phase, f"plain_{field}",
                better),
        )

    return (
        Row(f"{phase}_per_s", label, "msg/s", ",.0f", phase, "per_s"),
        Row(f"{phase}_plain_per_s", "  the same client without the channel", "msg/s", ",.0f",
            phase, "plain_per_s"),
        Row(f"{phase}_ratio", "  secure / plain", "x", ".3f", phase, "ratio", target=target),
        *(pair("p50_us", "  latency p50", "µs", ".1f", LOWER) if latency else ()),
        *pair("server_cpu_us", "  responder CPU per message", "µs", ".2f", LOWER),
        *pair("client_cpu_us", "  initiator CPU per message", "µs", ".2f", LOWER),
    )


ROWS: Tuple[Row, ...] = (
    # Sequential round trips on one connection, greenockam client and server.
    Row("rtt_per_s", "round trips, 1 conn", "msg/s", ",.0f", "rtt", "per_s",
        baseline="rtt", ratio="rtt_ratio", ratio_target=0.75),
    Row("rtt_p50_us", "  latency p50", "µs", ".1f", "rtt", "p50_us", LOWER,
        baseline="rtt", ratio="rtt_p50_ratio"),
    Row("rtt_p99_us", "  latency p99", "µs", ".1f", "rtt", "p99_us", LOWER,
        baseline="rtt", ratio="rtt_p99_ratio"),
    _cpu("rtt", "server"),
    _cpu("rtt", "client"),
    # The same with a raw client: greenockam's server side alone, against raw client and server.
    Row("rtt_server_per_s", "round trips, raw client -> greenockam server", "msg/s", ",.0f",
        "rtt_server", "per_s", baseline="rtt", ratio="rtt_server_ratio"),
    Row("rtt_server_p50_us", "  latency p50", "µs", ".1f", "rtt_server", "p50_us", LOWER,
        baseline="rtt", ratio="rtt_server_p50_ratio"),
    Row("rtt_server_p99_us", "  latency p99", "µs", ".1f", "rtt_server", "p99_us", LOWER,
        baseline="rtt", ratio="rtt_server_p99_ratio"),
    _cpu("rtt_server", "server", baseline="rtt"),
    _cpu("rtt_server", "client", baseline="rtt", show=False),  # the raw client in both
    # One connection, a sender greenlet and a reader.
    Row("pipelined_per_s", "pipelined, {pipelined_n:,} msgs", "msg/s", ",.0f", "pipelined",
        "per_s", baseline="pipelined", ratio="pipelined_ratio", ratio_target=0.80),
    _cpu("pipelined", "server"),
    _cpu("pipelined", "client"),
    # Concurrent connections, round trips on each.
    Row("conns_per_s", "{conns} conns x {per_conn} round trips", "msg/s", ",.0f", "conns",
        "per_s", baseline="conns", ratio="conns_ratio", ratio_target=0.75),
    _cpu("conns", "server"),
    _cpu("conns", "client"),
    # Idle connections: the server's RSS growth per connection.
    Row("bytes_per_idle_conn", "server RSS per idle conn, {idle_n:,}", "bytes", ",.0f", "idle",
        "bytes_per_conn", LOWER, baseline="idle", ratio="bytes_per_idle_conn_ratio",
        target=20480.0),
    # Pipelined through a hub, against the same client straight to the same echoer in the same
    # run (greenockam only: the ratio is each run's own, then the median).
    Row("hub_per_s", "pipelined through the hub, {pipelined_n:,} msgs", "msg/s", ",.0f", "hub",
        "per_s"),
    Row("hub_direct_per_s", "  the same client straight to the echoer", "msg/s", ",.0f", "hub",
        "direct_per_s"),
    Row("hub_ratio", "  through the hub / straight", "x", ".3f", "hub", "ratio", target=0.5),
    Row("hub_cpu_us", "  hub CPU per message", "µs", ".2f", "hub", "hub_cpu_us", LOWER),
    # Through a secure channel (the initiator is the client, the responder the echo server, in
    # separate processes), against the same client plain to the same server in the same run
    # (greenockam only).
    *_secure("secure_rtt", "round trips through a secure channel", 0.75, latency=True),
    *_secure("secure_pipelined", "pipelined through a secure channel, {secure_pipelined_n:,} msgs",
             0.5, latency=False),
    # In-process figures (the codec phase: codec.MEASURES), greenockam only.
    Row("codec_encode_ns", "codec encode, reply popped", "ns", ",.0f", "codec", "encode_ns",
        LOWER),
    Row("codec_encode_plain_ns", "codec encode, reply without a hop to pop", "ns", ",.0f",
        "codec", "encode_plain_ns", LOWER, show=False),
    Row("codec_decode_ns", "codec decode, FrameDecoder.feed", "ns", ",.0f", "codec", "decode_ns",
        LOWER),
    Row("codec_roundtrip_ns", "codec encode + decode", "ns", ",.0f", "codec", "roundtrip_ns",
        LOWER, target=1300.0),
    Row("codec_payload_encode_ns", "  BARE str payload encode", "ns", ",.0f", "codec",
        "payload_encode_ns", LOWER),
    Row("codec_payload_decode_ns", "  BARE str payload decode", "ns", ",.0f", "codec",
        "payload_decode_ns", LOWER),
    Row("codec_as_route_list_ns", "  as_route(list of 2 str) per send", "ns", ",.0f", "codec",
        "as_route_list_ns", LOWER),
    Row("codec_call_overhead_ns", "timeit call overhead, in every codec figure", "ns", ",.0f",
        "codec", "call_overhead_ns", LOWER, show=False),
    Row("typed_struct_ns", "typed bare struct encode + decode", "ns", ",.0f", "codec",
        "typed_struct_ns", LOWER),
    Row("typed_struct_ratio", "  / json.dumps + json.loads of a dict", "x", ".3f", "codec",
        "typed_struct_ratio", LOWER, target=0.5),
    Row("typed_route_struct_ns", "typed bare struct with Route + Address", "ns", ",.0f", "codec",
        "typed_route_struct_ns", LOWER),
    Row("typed_route_struct_ratio", "  / json.dumps + json.loads of a dict", "x", ".3f",
        "codec", "typed_route_struct_ratio", LOWER, target=0.5),
    Row("json_struct_ns", "json of the small struct", "ns", ",.0f", "codec", "json_struct_ns",
        LOWER, show=False),
    Row("json_route_struct_ns", "json of the route struct", "ns", ",.0f", "codec",
        "json_route_struct_ns", LOWER, show=False),
)


def default_targets(rows: Sequence[Row] = ROWS) -> Dict[str, float]:
    """The published targets (README, Performance), by figure key."""
    targets: Dict[str, float] = {}
    for row in rows:
        if row.target is not None:
            targets[row.key] = row.target
        if row.ratio is not None and row.ratio_target is not None:
            targets[row.ratio] = row.ratio_target
    return targets


def parse_targets(items: Sequence[str], rows: Sequence[Row] = ROWS) -> Dict[str, float]:
    """The default targets with ``KEY=VALUE`` items added or overriding them.

    Raises:
        BenchError: an item is not KEY=VALUE with a number, or KEY is no figure of ``rows``
            that a target can name (a greenockam value or a ratio).
    """
    known = {key for row in rows for key in row.target_keys()}
    targets = default_targets(rows)
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise BenchError(f"target {item!r} is not KEY=VALUE")
        if key not in known:
            raise BenchError(f"target {key!r} names no figure of the table")
        try:
            targets[key] = float(value)
        except ValueError:
            raise BenchError(f"target {item!r}: {value!r} is not a number") from None
    return targets


def aggregate(runs: Runs, rows: Sequence[Row] = ROWS) -> Dict[str, float]:
    """Every row's figures from the runs: its value, and with a baseline ``raw_<key>`` and the
    ratio greenockam / raw (NaN when raw is not above 0).

    Raises:
        BenchError: a row names a phase that has no runs, or a field a run's result lacks; or
            two rows yield the same key.
    """
    figures: Dict[str, float] = {}

    def put(key: str, value: float) -> None:
        if key in figures:
            raise BenchError(f"figure {key}: yielded by two rows of the table")
        figures[key] = value

    for row in rows:
        value = _aggregate(row, runs, "gko", row.phase)
        put(row.key, value)
        if row.baseline is not None and row.ratio is not None:
            raw = _aggregate(row, runs, "raw", row.baseline)
            put("raw_" + row.key, raw)
            put(row.ratio, value / raw if raw > 0 else NAN)
    return figures


def _aggregate(row: Row, runs: Runs, impl: str, phase: str) -> float:
    results = runs.get((impl, phase))
    if not results:
        raise BenchError(f"figure {row.key}: no {impl} run of phase {phase!r}")
    lacking = [i + 1 for i, result in enumerate(results) if row.field not in result]
    if lacking:
        raise BenchError(
            f"figure {row.key}: {impl} {phase} run(s) {lacking} have no field {row.field!r}"
        )
    return float(row.aggregate([result[row.field] for result in results]))


def check_targets(
    figures: Mapping[str, float], targets: Mapping[str, float], rows: Sequence[Row] = ROWS
) -> Dict[str, bool]:
    """Whether each target is met (a NaN figure meets none), in the order of ``rows``.

    Raises:
        BenchError: a target names a figure that is not a greenockam value or ratio of ``rows``
            or that no run produced.
    """
    better = {key: row.better for row in rows for key in row.target_keys()}
    missing = sorted(key for key in targets if key not in better or key not in figures)
    if missing:
        raise BenchError(f"target(s) on figure(s) no run produced: {', '.join(missing)}")
    met: Dict[str, bool] = {}
    for row in rows:
        for key in row.target_keys():
            if key in targets:
                value, goal = figures[key], targets[key]
                met[key] = value >= goal if row.better == HIGHER else value <= goal
    return met


def render(
    figures: Mapping[str, float],
    targets: Mapping[str, float],
    met: Mapping[str, bool],
    sizes: Mapping[str, int],
    reps: int,
    rows: Sequence[Row] = ROWS,
) -> List[str]:
    """The table's lines: a heading, then one line per row that is shown or has a target.

    ``met`` is :func:`check_targets`'s answer; ``sizes`` fill in the labels.
    """
    def target_cell(row: Row, key: str) -> str:
        if key not in targets:
            return "–"
        sign = ">=" if row.better == HIGHER else "<="
        return f"{sign} {targets[key]:,.4g}" + ("" if met[key] else "  MISSED")

    cells: List[Tuple[str, str, str, str, str]] = []
    for row in rows:
        if not (row.show or any(key in targets for key in row.target_keys())):
            continue
        raw = figures["raw_" + row.key] if row.baseline is not None else None
        cell = target_cell(row, row.key)
        if row.ratio is not None and row.ratio in targets:
            ratio_cell = target_cell(row, row.ratio)
            cell = ratio_cell if cell == "–" else f"{cell}; ratio {ratio_cell}"
        cells.append((
            f"{row.label.format(**sizes)} ({row.unit})",
            format(raw, row.fmt) if raw is not None else "–",
            format(figures[row.key], row.fmt),
            f"{figures[row.ratio]:.3f}" if row.ratio is not None else "–",
            cell,
        ))

    headers = ("figure", "raw gevent", "greenockam", "ratio", "target")
    widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) for i in range(5)]
    lines = [
        (
            f"medians of {reps} run(s); ratio = greenockam / raw gevent (codec figures: greenockam "
            f"only, timeit best of 5, incl. ~{figures['codec_call_overhead_ns']:.0f} ns call "
            "overhead)"
        ),
        " | ".join(h.ljust(w) for h, w in zip(headers, widths)),
        "-+-".join("-" * w for w in widths),
    ]
    for c in cells:
        lines.append(" | ".join(
            (text.ljust(w) if i in (0, 4) else text.rjust(w))
            for i, (text, w) in enumerate(zip(c, widths))
        ))
    return lines


def json_line(figures: Mapping[str, float], meta: Mapping[str, Any]) -> str:
    """The figures and ``meta`` (sizes, versions, targets, missed) as one JSON object with
    sorted keys; a NaN figure is null."""
    out: Dict[str, Any] = {k: (None if v != v else v) for k, v in figures.items()}
    out.update(meta)
    return json.dumps(out, sort_keys=True)
