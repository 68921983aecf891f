"""Test-support code that is not part of the roamlink package (not shipped in the wheel).

``netns``: network-namespace topologies (real NAT, real bottleneck) for root-only tests and
benchmarks. It installs Debian packages and embeds helper scripts, which is why it lives here
and not under ``src/roamlink``. Import it as ``tests.support.netns`` with the repository root
on ``sys.path`` (pytest puts it there; the bench scripts insert it themselves).
"""
