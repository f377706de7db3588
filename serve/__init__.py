"""``agents serve``: slmflow models behind the OpenAI chat-completions API and Ollama's chat API."""
