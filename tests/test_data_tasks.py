"""Reasoning-task generators: exact answers, difficulty as asked, unique Sudoku solutions."""

from __future__ import annotations

import random
import re

import pytest

from millennial.data import DataError
from millennial.data.tasks import (
    DIFFICULTY_LIMITS,
    Example,
    addition,
    count_solutions,
    generate,
    pointer_chase,
    sudoku4,
)


def resolve_pointer_chase(prompt: str) -> tuple[str, int]:
    """Answer a pointer-chasing prompt independently, counting the hops followed."""
    statements, query = prompt.rsplit(". ", 1)
    bindings = dict(s.split("=") for s in statements.split("; "))
    name, hops = query.rstrip("?"), 0
    while not bindings[name].isdigit():
        name, hops = bindings[name], hops + 1
    return bindings[name], hops


@pytest.mark.parametrize("hops", [1, 4, 12])
def test_pointer_chase_answer_and_hops(hops: int) -> None:
    rng = random.Random(hops)
    for _ in range(20):
        example = pointer_chase(rng, hops)
        assert resolve_pointer_chase(example.prompt) == (example.answer, hops)
        assert example.prompt.count("=") == 2 * (hops + 1)  # a distractor chain as long


@pytest.mark.parametrize("digits", [1, 3, 9])
def test_addition_answer_and_digits(digits: int) -> None:
    rng = random.Random(digits)
    for _ in range(20):
        example = addition(rng, digits)
        a, b = re.fullmatch(r"(\d+) \+ (\d+) =", example.prompt).groups()
        assert len(a) == len(b) == digits
        assert int(example.answer) == int(a) + int(b)


def parse_grid(rows: str) -> list[int]:
    return [0 if cell == "." else int(cell) for cell in rows.replace(" ", "")]


def is_valid_solution(grid: list[int]) -> bool:
    rows = [grid[4 * r : 4 * r + 4] for r in range(4)]
    cols = [grid[c::4] for c in range(4)]
    boxes = [[grid[4 * (br + r) + bc + c] for r in range(2) for c in range(2)]
             for br in (0, 2) for bc in (0, 2)]
    return all(sorted(unit) == [1, 2, 3, 4] for unit in rows + cols + boxes)


@pytest.mark.parametrize("blanks", [1, 6, 10, 12])
def test_sudoku4_is_unique_and_consistent(blanks: int) -> None:
    rng = random.Random(blanks)
    for _ in range(10):
        example = sudoku4(rng, blanks)
        puzzle = parse_grid(example.prompt.removeprefix("sudoku ").removesuffix(" ->"))
        solution = parse_grid(example.answer)
        assert puzzle.count(0) == blanks == example.difficulty
        assert is_valid_solution(solution)
        assert all(p in (0, s) for p, s in zip(puzzle, solution, strict=True))
        assert count_solutions(puzzle) == 1


def test_count_solutions() -> None:
    solved = parse_grid("1234 3412 2143 4321")
    assert count_solutions(list(solved)) == 1
    assert count_solutions([0] * 16) == 2  # stops at the limit
    assert count_solutions([0] * 16, limit=1000) == 288  # all 4x4 Sudoku grids
    contradiction = parse_grid("11.. .... .... ....")
    assert count_solutions(contradiction) == 0


def test_generate_is_seeded_and_within_range() -> None:
    first = list(generate("addition", 50, (2, 4), seed=3))
    assert first == list(generate("addition", 50, (2, 4), seed=3))
    assert first != list(generate("addition", 50, (2, 4), seed=4))
    assert {e.difficulty for e in first} == {2, 3, 4}
    assert all(isinstance(e, Example) and e.task == "addition" for e in first)


def test_generate_rejects_unknown_task_and_bad_range() -> None:
    with pytest.raises(DataError, match="unknown task 'maze'"):
        list(generate("maze", 1, (1, 1), seed=0))
    low, high = DIFFICULTY_LIMITS["sudoku4"]
    with pytest.raises(DataError, match=r"task 'sudoku4': difficulty range \[1, 13\] outside"):
        list(generate("sudoku4", 1, (low, high + 1), seed=0))
