"""MMLU-layout multiple-choice data: ``DATA_DIR/dev/<subject>_dev.csv`` (few-shot examples) and
``DATA_DIR/test/<subject>_test.csv``, rows ``question, A, B, C, D, answer`` without a header, and the prompts
of TensorRT-LLM's ``mmlu.py`` built from them.

Categories: ``DATA_DIR/categories.json`` (``{subject: category}``) when present, else MMLU's own grouping of
its 57 subjects (``MMLU_CATEGORIES``); other subjects count as "other". The default data is a small set
written for this project (``ckpt_eval/data/mmlu_mini``), 4 subjects of everyday knowledge.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CHOICES = ("A", "B", "C", "D")
SHIPPED_DIR = "mmlu_mini"
MMLU_CATEGORIES = {
    "STEM": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
    "professional_law world_religions",
    "social sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
    "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
}


class DataError(ValueError):
    """Unreadable or malformed data; the message is one line naming the file and the field."""


@dataclass(frozen=True)
class Question:
    subject: str
    text: str
    options: tuple[str, str, str, str]
    answer: str  # one of CHOICES

    def prompt(self, with_answer: bool) -> str:
        lines = [self.text] + [f"{letter}. {option}" for letter, option in zip(CHOICES, self.options)]
        return "\n".join(lines) + "\nAnswer:" + (f" {self.answer}\n\n" if with_answer else "")


@dataclass
class Subject:
    name: str
    category: str
    dev: list[Question]
    test: list[Question]

    def header(self) -> str:
        return f"The following are multiple choice questions (with answers) about {self.name.replace('_', ' ')}.\n\n"

    def prompt(self, question: Question, shots: int) -> str:
        """The header, ``shots`` dev examples with their answers, then the question."""
        return self.header() + "".join(q.prompt(True) for q in self.dev[:shots]) + question.prompt(False)


def shipped_dir() -> Path:
    with resources.as_file(resources.files("ckpt_eval") / "data" / SHIPPED_DIR) as path:
        return Path(path)


def read_questions(path: Path, subject: str, allow_empty: bool = False) -> list[Question]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    out = []
    for number, row in enumerate(rows, 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 6:
            raise DataError(f"{path}: row {number}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
        answer = row[5].strip().upper()
        if answer not in CHOICES:
            raise DataError(f"{path}: row {number}: answer {row[5]!r} is not one of A, B, C, D")
        options = (row[1].strip(), row[2].strip(), row[3].strip(), row[4].strip())
        out.append(Question(subject, row[0].strip(), options, answer))
    if not out and not allow_empty:
        raise DataError(f"{path}: no questions")
    return out


def categories(data_dir: Path) -> dict[str, str]:
    """subject -> category: ``categories.json`` of the data directory, else MMLU's grouping."""
    path = data_dir / "categories.json"
    if not path.is_file():
        return {subject: cat for cat, names in MMLU_CATEGORIES.items() for subject in names.split()}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(f"{path}: expected an object mapping each subject to its category name")
    return table


def load_subjects(data_dir: str | None, ntrain: int) -> list[Subject]:
    """Every subject of ``data_dir/test`` with its first ``ntrain`` dev examples (checked to exist)."""
    root = Path(data_dir) if data_dir else shipped_dir()
    tests = sorted((root / "test").glob("*_test.csv"))
    if not tests:
        raise DataError(f"{root / 'test'}: no <subject>_test.csv files (expected MMLU's dev/ and test/ layout)")
    table = categories(root)
    subjects = []
    for test in tests:
        name = test.name[: -len("_test.csv")]
        dev_path = root / "dev" / f"{name}_dev.csv"
        dev = read_questions(dev_path, name, allow_empty=True) if dev_path.is_file() else []
        if len(dev) < ntrain:
            raise DataError(f"{dev_path}: subject {name} has {len(dev)} dev examples, --ntrain {ntrain} needs {ntrain}")
        subjects.append(Subject(name, table.get(name, "other"), dev, read_questions(test, name)))
    return subjects
