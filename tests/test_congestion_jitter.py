"""Issue 15's figures on jittery, reordering paths, in the simulator (virtual clock, fixed seeds).

The path is the relay's: 20 ms RTT, each one-way delay 10 ms +- J (``delay=10ms-J`` plus up to
``2J``), in order ("fifo": a cellular or Wi-Fi link, a queue of varying depth) or reordering
(netem-like). A 50 Mbit/s bottleneck with a 100-packet queue keeps each run to a few seconds
of wall time; ``bench/sim_figures.py`` runs the same scenarios at 100 Mbit/s for longer and
prints the figures that ``docs/recovery.md`` carries.
"""

from __future__ import annotations

from functools import cache

from roamlink.config import Config
from roamlink.testing.bulk import BottleneckRun, run_bottleneck
from roamlink.testing.simnet import HostStalls

RATE = 50e6 / 8
SECONDS = 3.0


@cache
def path(controller: str, jitter: float, mode: str = "fifo", loss: float = 0.0,
         flows: int = 1, seconds: float = SECONDS, rate: float = RATE) -> BottleneckRun:
    return run_bottleneck(controller, loss=loss, seconds=seconds, rate=rate,
                          one_way_delay=0.01 - jitter, jitter=2 * jitter,
                          jitter_mode="fifo" if mode == "fifo" else "reorder", flows=flows,
                          stagger=1.0 if flows > 1 else 0.0,
                          warmup=seconds / 2 if flows > 1 else 0.0, seed=2 if flows > 1 else 1)


def test_the_default_controller_is_bbr() -> None:
    assert Config().congestion_control == "bbr"
    assert path("bbr", 0.0, loss=0.01).stats[0].congestion_controller == "bbr"


def test_fifo_jitter_keeps_most_of_the_jitter_free_goodput() -> None:
    """1% random loss: 5 ms of in-order jitter keeps >= 70% of the same controller's
    jitter-free goodput (Vegas fell to about 12% here, reading jitter as a queue), and >= 2x
    a loss-based NewReno (aioquic's controller) on the same path."""
    calm = path("bbr", 0.0, loss=0.01)
    jittery = path("bbr", 0.005, loss=0.01)
    reno = path("newreno", 0.005, loss=0.01)
    assert calm.exact and jittery.exact and reno.exact
    assert calm.utilisation >= 0.8, calm.summary()
    assert jittery.goodput >= 0.7 * calm.goodput, (jittery.summary(), calm.summary())
    assert jittery.goodput >= 2 * reno.goodput, (jittery.summary(), reno.summary())


def test_bottleneck_with_jitter_is_used() -> None:
    run = path("bbr", 0.005, loss=0.01)  # (with 1% loss too, which only makes it harder)
    assert run.exact
    assert run.utilisation >= 0.8, run.summary()


def test_reordering_jitter_causes_few_spurious_retransmissions() -> None:
    """Independent per-packet jitter (packets overtake one another by up to 10 ms): RACK's
    reordering window adapts after the first spurious losses, so < 1% of packets sent are
    spurious retransmissions, and the rate holds."""
    run = path("bbr", 0.005, mode="reorder")
    st = run.stats[0]
    assert run.exact
    assert st.spurious_losses < 0.01 * st.packets_sent, run.summary()
    assert run.utilisation >= 0.8, run.summary()


def test_queue_stays_short_without_jitter() -> None:
    """A single flow keeps the bottleneck queue's mean delay within 5 ms of the base RTT."""
    run = path("bbr", 0.0, loss=0.01)
    assert run.exact
    assert run.queue_delay <= 0.005, run.summary()
    assert run.utilisation >= 0.85, run.summary()


def test_two_flows_share_the_bottleneck_fairly() -> None:
    """The second flow starts a second later; over the second half Jain's index >= 0.95.
    (20 Mbit/s: the shares converge within a few gain cycles; the cost is in packets.)"""
    run = path("bbr", 0.0, flows=2, seconds=6.0, rate=20e6 / 8)
    assert run.exact
    a, b = run.goodputs
    jain = (a + b) ** 2 / (2 * (a * a + b * b))
    assert jain >= 0.95, run.summary()
    assert run.utilisation >= 0.85, run.summary()


def test_sub_millisecond_path_through_a_shaper_on_busy_hosts_keeps_the_queue_short() -> None:
    """The netns figure's path in the simulator: 0.5 ms RTT, a 50 Mbit/s token-bucket shaper
    (tbf's 15 KB bucket, 100 packets of queue), both hosts descheduled for 1-15 ms every
    3-20 ms. The bottleneck's mean queueing delay stays within 5 ms of the base RTT (it was
    8 ms, with queue overflows, while a flight's opening burst through the full bucket could
    raise the bandwidth model and a host stall the ACK-aggregation allowance to 20-40 BDPs),
    and most of the link is still used although the hosts stall 40% of the time."""
    run = run_bottleneck("bbr", seconds=3.0, rate=RATE, one_way_delay=0.00025, warmup=1.0,
                         burst=15137, stalls=HostStalls(run_min=0.003, run_max=0.02,
                                                        stall_min=0.001, stall_max=0.015))
    assert run.exact
    assert run.queue_delay <= 0.004, run.summary()
    assert run.utilisation >= 0.7, run.summary()
