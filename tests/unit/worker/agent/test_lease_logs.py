"""What a closing lease ships: Ray's logs and the commands' output, capped, never followed out of the lease."""

import json
import os

from worker.agent import lease_logs


def _session(temp_dir):
    session = temp_dir / "session_2026-11-30_21-00-00_000000_1"
    (session / "logs").mkdir(parents=True)
    os.symlink(session.name, temp_dir / "session_latest")  # as Ray makes it: a relative link
    return session / "logs"


def test_job_drivers_first_then_tasks_then_ray_and_commands(tmp_path):
    logs = _session(tmp_path / "tmp")
    (logs / "raylet.out").write_text("raylet says\n")
    (logs / "job-driver-raysubmit_abc.log").write_text("hello from the driver\n")
    (logs / "worker-1.out").write_text("task print\n")
    commands = tmp_path / "lease" / "logs"
    commands.mkdir(parents=True)
    (commands / "0001-run.log").write_text("ray start ok\n")
    shipped = lease_logs.collect(tmp_path / "tmp", commands)
    assert [f["name"] for f in shipped] == [
        "ray/job-driver-raysubmit_abc.log",
        "ray/worker-1.out",
        "ray/raylet.out",
        "commands/0001-run.log",
    ]
    assert shipped[0]["text"] == "hello from the driver\n" and not shipped[0]["truncated"]


def test_links_out_of_the_lease_are_not_followed(tmp_path):
    secret = tmp_path / "agent" / "machine.json"
    secret.parent.mkdir()
    secret.write_text('{"agent_key": "dcm.secret"}')
    logs = _session(tmp_path / "tmp")
    os.symlink(secret, logs / "job-driver-evil.log")  # a buyer's symlink to the agent's key
    os.link(secret, logs / "worker-hardlink.out")  # and a hard link to it
    (logs / "raylet.out").write_text("fine\n")
    shipped = lease_logs.collect(tmp_path / "tmp", tmp_path / "nothing")
    by_name = {f["name"]: f["text"] for f in shipped}
    assert by_name == {  # each refusal said in the file's place, with none of its bytes
        "ray/job-driver-evil.log": lease_logs.NOT_SHIPPED + "a symbolic link: not followed\n",
        "ray/worker-hardlink.out": lease_logs.NOT_SHIPPED + "a file with 2 hard links: not read\n",
        "ray/raylet.out": "fine\n",
    }
    assert "dcm.secret" not in json.dumps(shipped)


def test_a_session_link_pointing_outside_ships_nothing(tmp_path):
    outside = tmp_path / "outside" / "logs"
    outside.mkdir(parents=True)
    (outside / "raylet.out").write_text("not the lease's\n")
    (tmp_path / "tmp").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "tmp" / "session_latest")
    assert lease_logs.collect(tmp_path / "tmp", tmp_path / "nothing") == []


def test_long_files_keep_their_tail_and_the_lease_stays_under_its_cap(tmp_path):
    logs = _session(tmp_path / "tmp")
    (logs / "job-driver-a.log").write_text("x" * 5000 + "THE END\n")
    (logs / "worker-1.out").write_text("é" * 4000)  # escapes make JSON longer than the text
    (logs / "worker-2.out").write_text("never reached\n")
    shipped = lease_logs.collect(tmp_path / "tmp", tmp_path / "nothing", max_bytes=4000, max_file_bytes=1000)
    assert shipped[0]["text"].endswith("THE END\n") and shipped[0]["truncated"] and shipped[0]["bytes"] == 5008
    assert shipped[1]["name"] == "ray/worker-1.out" and shipped[1]["truncated"]
    assert sum(len(json.dumps(f["text"])) for f in shipped) <= 4000
    assert "never reached\n" not in [f["text"] for f in shipped]
