"""BLAS threads chosen by the size of the work."""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from bnserve.training import threads


def test_small_matrices_get_one_thread_large_ones_every_core(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads, "current_blas_threads", lambda: 8)
    assert threads.blas_threads_for(64, [64, 128, 128, 10]) == 1
    assert threads.blas_threads_for(512, [256, 1024, 1024, 1024, 10]) == 4
    assert threads.blas_threads_for(256, [784, 512, 512, 10]) == 1  # 205 MFLOP: one is faster


def test_the_choice_never_exceeds_the_threads_blas_already_has(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    with threadpool_limits(limits=1, user_api="blas"):  # as in a tune worker
        assert threads.current_blas_threads() == 1
        assert threads.blas_threads_for(512, [256, 1024, 10]) == 1


def test_a_requested_count_wins():
    assert threads.blas_threads_for(64, [64, 128, 10], requested=3) == 3
    assert threads.blas_threads_for(512, [256, 1024, 10], requested=1) == 1
    assert threads.blas_threads_for(512, [256, 1024, 10], requested=0) == 1
