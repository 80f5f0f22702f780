"""Pure maths of the analyses: functions of arrays and operators, never of a model or a run."""
