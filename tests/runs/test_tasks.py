import threading

from core.runs.tasks import TaskManager
from core.data import IngestError


def test_a_task_runs_in_the_background_reports_progress_and_returns_its_result():
    tasks = TaskManager()
    release = threading.Event()

    def work(n, progress, scale=1):
        progress("halfway")
        release.wait(10)
        return n * scale

    task_id = tasks.submit("sum", "k", "a sum", work, 21, scale=2)
    snap = tasks.snapshot(task_id)
    assert snap.active and snap.label == "a sum"
    # a second click while it runs gets the same task, not a second thread
    assert tasks.submit("sum", "k", "a sum", work, 1) == task_id
    assert [s.task_id for s in tasks.active()] == [task_id]
    release.set()
    done = tasks.wait(task_id, timeout=10)
    assert done.status == "done" and done.result == 42 and done.messages == 1 and done.finished
    assert tasks.latest("sum", "k").task_id == task_id and tasks.latest("sum", "other") is None
    # once finished, the same key starts a new task
    assert tasks.submit("sum", "k", "again", work, 1) != task_id


def test_user_errors_keep_their_message_and_bugs_say_they_are_bugs():
    tasks = TaskManager()

    def bad_input(progress):
        raise IngestError("the folder holds no images; add some")

    def bug(progress):
        return {}["missing"]

    def plain_value_error(progress):  # not one of core's errors: a bug, however it reads
        raise ValueError("could not convert string to float: 'x'")

    user = tasks.wait(tasks.submit("x", "1", "", bad_input), 10)
    assert user.status == "failed" and user.error == "the folder holds no images; add some"
    broken = tasks.wait(tasks.submit("x", "2", "", bug), 10)
    assert broken.status == "failed" and "KeyError" in broken.error and "report it" in broken.error
    assert "Traceback" in broken.error_traceback
    odd = tasks.wait(tasks.submit("x", "3", "", plain_value_error), 10)
    assert odd.status == "failed" and "ValueError" in odd.error and "report it" in odd.error


def test_finished_tasks_are_forgotten_beyond_a_bound():
    from core.runs import tasks as module

    manager = TaskManager()
    ids = [manager.submit("n", str(i), "", lambda progress, i=i: i) for i in range(module.KEEP_FINISHED + 5)]
    for task_id in ids:
        manager.wait(task_id, 10)
    manager.wait(manager.submit("n", "last", "", lambda progress: 0), 10)
    assert manager.snapshot(ids[0]) is None and manager.snapshot(ids[-1]).result == len(ids) - 1
