"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on loopback, thrown away after.

``orthanc_server`` writes a one-off JSON configuration (free port, storage in a temporary folder,
HTTP basic authentication, the DicomWeb plugin from the Debian plugin folder), starts ``Orthanc``
and waits for it; at the end it stops the process and removes the folder. Without Orthanc the
tests are skipped, except under CI (environment variable CI set), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "reader", "pacs-test-secret"


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: its web root, its DICOMweb root and the credentials it wants."""

    root: str
    dicomweb: str
    user: str
    password: str
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_orthanc() -> None:
    """Skip (fail under CI) when Orthanc or its DICOMweb plugin is missing."""
    missing = [str(p) for p in (Path(ORTHANC), DICOMWEB_PLUGIN) if not p.exists()]
    if missing:
        reason = f"{', '.join(missing)} missing: apt-get install orthanc orthanc-dicomweb"
        if "CI" in os.environ:
            pytest.fail(f"{reason}; CI must run the PACS tests", pytrace=False)
        pytest.skip(reason)


def _wait_until_up(server: OrthancServer, process: subprocess.Popen, seconds: float = 30.0) -> None:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {server.log.read_text()[-2000:]}")
        try:
            answer = requests.get(f"{server.root}/system", auth=(server.user, server.password), timeout=1)
            if answer.ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer within {seconds} s: {server.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def orthanc_server() -> Iterator[OrthancServer]:
    """An empty Orthanc with DICOMweb on a free loopback port; stopped and deleted at the end."""
    require_orthanc()
    folder = Path(tempfile.mkdtemp(prefix="kneepain-orthanc-"))
    port = free_port()
    config = {
        "Name": "kneepain-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    root = f"http://127.0.0.1:{port}"
    server = OrthancServer(root, f"{root}/dicom-web", USER, PASSWORD, folder / "orthanc.log")
    with server.log.open("w") as log:
        process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=log)
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def upload_folders(server: OrthancServer, folders: list[Path]) -> None:
    """STOW-RS every DICOM file of ``folders`` into the server (one request per study)."""
    import pydicom

    from kneepain.dicomweb import connect

    client = connect(server.dicomweb, user=server.user, password=server.password)
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            dataset = pydicom.dcmread(path)
            by_study.setdefault(str(dataset.StudyInstanceUID), []).append(dataset)
    for study_uid, datasets in by_study.items():
        response = client.store_instances(datasets, study_instance_uid=study_uid)
        assert not response.get("FailedSOPSequence"), response
