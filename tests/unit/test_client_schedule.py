"""Sessions start on the planned schedule, also when the generator is behind it."""

import trio

from kit.client._load import start_on_schedule


async def test_sessions_already_due_all_start_without_yielding_to_the_scheduler():
    passes = 0

    async def busy_loop_marker():
        nonlocal passes
        while True:
            passes += 1
            await trio.lowlevel.checkpoint()

    started = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy_loop_marker)
        await trio.lowlevel.checkpoint()  # let the marker run once
        before = passes
        plan = [(g, g * 0.001) for g in range(500)]
        await start_on_schedule(
            plan,
            trio.current_time() - 1.0,  # the whole plan is 1 s overdue
            lambda g, off: started.append((g, passes)),
        )
        assert len(started) == 500
        assert {p for _, p in started} == {before}, "a session waited for a scheduler pass while overdue"
        nursery.cancel_scope.cancel()


async def test_future_sessions_start_at_their_offsets(autojump_clock):
    t0 = trio.current_time()
    seen = []
    await start_on_schedule(
        [(0, 0.0), (1, 0.5), (2, 2.0)], t0, lambda g, off: seen.append((g, trio.current_time() - t0))
    )
    assert [g for g, _ in seen] == [0, 1, 2]
    assert [round(t, 6) for _, t in seen] == [0.0, 0.5, 2.0]
