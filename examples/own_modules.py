"""Your own teacher and student, as they are: module names of your choosing, a teacher whose forward
returns a dict and a student whose forward returns a tuple. Register them, name the modules whose
features should match, and distil (KD on the logits plus a FitNets hint between your own layers):

    python examples/own_modules.py          # trains both on the embedded digits, about 15 seconds

kdkit takes the logits from a tuple (its first tensor) or a dict (its "logits" entry); ``output:`` in a
model's spec picks another index or key. Features are taken by module path with forward hooks, so
nothing in the networks is kdkit-specific. The same works from the command line with
``kdkit --plugin examples/own_modules.py distill recipe.yaml`` and ``model: my_student``.
"""

from __future__ import annotations

from torch import nn

import kdkit


@kdkit.register_model("my_teacher")
class MyTeacher(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        features = self.backbone(x)
        return {"logits": self.classifier(features), "features": features}


@kdkit.register_model("my_student")
class MyStudent(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        hidden = self.encoder(x)
        return self.fc(hidden.mean((2, 3))), hidden


def main(out_dir: str = "runs") -> dict:
    data = {"name": "digits"}
    train = {"epochs": 10, "out_dir": out_dir, "progress": False}
    optim = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    teacher = kdkit.from_config(kdkit.load_config(base={
        "model": "my_teacher", "data": data, "optim": optim, "train": {**train, "run_name": "own-teacher"}}),
        log=lambda m: None)
    print(f"teacher test top-1: {teacher.fit()['test/top1']:.2f}")
    student = kdkit.from_config(kdkit.load_config(base={
        "model": "my_student", "data": data, "optim": optim, "train": {**train, "run_name": "own-student"},
        "teacher": {"name": "my_teacher", "checkpoint": f"{out_dir}/own-teacher/checkpoint.pt"},
        "method": [{"name": "kd"},  # and a hint from the teacher's "backbone" to the student's "encoder"
                   {"name": "fitnets", "student_layer": "encoder", "teacher_layer": "backbone", "beta": 1.0}]}),
        log=lambda m: None)
    result = student.fit()
    print(f"student test top-1: {result['test/top1']:.2f} (agreement with the teacher {result['test/agreement']:.2f}%)")
    return result


if __name__ == "__main__":
    main()
