"""Teacher rationales: the file format, prompts and judging, teachers, resumable generation, and imports."""
