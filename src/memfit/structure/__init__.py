"""What a model is made of, as the planner and the appliers see it: repeated blocks, module name
patterns, and the layers techniques apply to. Reads modules; changes nothing."""
