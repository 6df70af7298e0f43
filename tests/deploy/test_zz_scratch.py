def _f():
    return 1

def test_unimportable(shared_client):
    _f.__module__ = __name__
    fut = shared_client.submit(_f)
    fut.result(timeout=10)
