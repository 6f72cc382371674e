"""``edgepack target setup|status ARCH``: the emulated-target sysroots in the cache."""

from __future__ import annotations

import click


@click.group("target")
def command() -> None:
    """Prepare and inspect emulated targets (the ARM64 sysroot QEMU recipes run in)."""


@command.command("setup")
@click.argument("arch", type=click.Choice(["arm64"]))
@click.option("--force", is_flag=True, help="rebuild even if a usable sysroot is cached")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars")
def setup(arch: str, force: bool, quiet: bool) -> None:
    """Build the ARM64 sysroot once into the cache ($EDGEPACK_CACHE, else ~/.cache/edgepack)."""
    from exporter.common.progress import make_progress, stderr_console
    from exporter.targets.sysroot import build, problems, read_stamp, sysroot_for

    sr = sysroot_for(arch)
    console = stderr_console(quiet)
    if not force and not problems(sr):
        console.print(f"{arch} sysroot already built in {sr.root} (use --force to rebuild)")
        click.echo(str(sr.root))
        return
    with make_progress(quiet) as progress:
        sr = build(arch, force=force or sr.root.exists(), progress=progress)
    stamp = read_stamp(sr) or {}
    wheels = ", ".join(f"{k} {v}" for k, v in stamp.get("wheels", {}).items())
    console.print(
        f"{arch} sysroot ready in {sr.root}: python {stamp.get('python')}, {wheels}; "
        f"{stamp.get('bytes', 0) / 1e6:.0f} MB, {stamp.get('seconds')} s"
    )
    click.echo(str(sr.root))


@command.command("status")
@click.argument("arch", type=click.Choice(["arm64"]), required=False, default="arm64")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(arch: str, as_json: bool) -> None:
    """What is cached for ARCH, and whether it is usable."""
    import json
    import shutil

    from exporter.targets.sysroot import problems, read_stamp, sysroot_for

    sr = sysroot_for(arch)
    issues = problems(sr)
    stamp = read_stamp(sr)
    info = {
        "arch": arch,
        "path": str(sr.root),
        "usable": not issues,
        "problems": issues,
        "qemu": shutil.which("qemu-aarch64"),
        "stamp": stamp,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{arch}: {sr.root}")
    click.echo(f"  qemu-aarch64: {info['qemu'] or 'not found (apt-get install qemu-user)'}")
    if issues:
        hint = "" if issues == ["not built"] else " --force"
        click.echo(f"  not usable: {'; '.join(issues)} (edgepack target setup {arch}{hint})")
    if stamp:
        wheels = ", ".join(f"{k} {v}" for k, v in stamp.get("wheels", {}).items())
        click.echo(f"  python {stamp.get('python')} ({stamp.get('suite')}), {wheels}")
        click.echo(
            f"  {len(stamp.get('debs', []))} .deb, {stamp.get('bytes', 0) / 1e6:.0f} MB, "
            f"built {stamp.get('built')} in {stamp.get('seconds')} s "
            f"with qemu {stamp.get('qemu')}"
        )
