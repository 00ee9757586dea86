"""Law forms and how each is fitted: the named forms (`forms`), Chinchilla's three approaches,
Kaplan's laws, one-variable power laws, and fit.json (`fits`)."""
