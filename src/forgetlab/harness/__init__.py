"""lm-evaluation-harness: forgetlab's multiple-choice tasks written as local lm-eval tasks
and scored by lm-eval (`lm_eval_tasks`), and the backend of `forgetlab eval --lm-eval`
(`evaluate`)."""
