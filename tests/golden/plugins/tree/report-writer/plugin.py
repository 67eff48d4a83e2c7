"""Never run: this fixture exists for its manifest."""
